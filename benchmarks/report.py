"""``make bench``: every figure of ``BENCHMARKS.md`` measured in one run, on one machine, with a plot.

Runs every section of every benchmark module (``SECTIONS``) one after the other on the same model and
inputs, each bounded in requests and seconds, the service only on loopback; records the machine (its CPU
and instruction sets), its load and the command behind each section; then writes ``BENCHMARKS.md``, the
throughput-against-batch-size plot and the raw results. A section that fails is reported as failed in the
file and makes the command exit with status 1.

python -m benchmarks.report                               # the full run
python -m benchmarks.report --quick --out /tmp/bench.md   # tiny budgets: checks the pipeline, not the figures
python -m benchmarks.report --sections load,stages        # only some sections
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import resource
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import (
    batch_delay,
    class_maps,
    explain_speed,
    gpu,
    insertion_deletion,
    int8,
    load,
    onnx_speed,
    scaling,
    soak,
    stages,
    timeline,
    tracing_cost,
    train_speed,
)
from benchmarks.sections import Aim, Context, Section, missing_model, pct, result_of, table
from training.logs import quiet_third_party, setup_logging
from training.precision import cpu_model
from training.revision import git_revision

log = logging.getLogger("benchmarks.report")

# The report's sections, in its order; each benchmark module declares its own.
SECTIONS: tuple[Section, ...] = (
    *load.SECTIONS, *timeline.SECTIONS, *tracing_cost.SECTIONS, *stages.SECTIONS, *batch_delay.SECTIONS,
    *scaling.SECTIONS, *int8.SECTIONS, *onnx_speed.SECTIONS, *class_maps.SECTIONS, *explain_speed.SECTIONS,
    *train_speed.SECTIONS, *insertion_deletion.SECTIONS, *gpu.SECTIONS, *soak.SECTIONS,
)  # fmt: skip
NAMES = tuple(section.name for section in SECTIONS)
PLOT_NAME = "throughput_vs_batch.png"
WALL_AIM_MIN = 30  # the whole of `make bench` on two cores, its ten-minute soak included


@dataclass(frozen=True)
class Options:
    model: Path
    int8_model: Path | None
    sections: tuple[str, ...] = NAMES
    quick: bool = False  # each section's quick budget: checks the pipeline, not the figures
    command: str = "python -m benchmarks.report"
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)  # a section's budget, where not its own


def cpu_seconds() -> tuple[float, float]:
    """``(busy CPU seconds of the whole machine since boot, CPU seconds of this process and its finished
    children)``; the machine's figure is NaN where ``/proc/stat`` does not exist."""
    own = sum(
        getattr(resource.getrusage(who), name)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for name in ("ru_utime", "ru_stime")
    )
    stat = Path("/proc/stat")
    if not stat.is_file():
        return math.nan, own
    ticks = [int(value) for value in stat.read_text().split("\n", 1)[0].split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle and iowait; steal counts as taken by others
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK"), own


def others_share(
    start: tuple[float, float], end: tuple[float, float], wall_s: float, cores: int, shortest_s: float = 1.0
) -> float | None:
    """Share of the machine's CPU that processes other than this run used between two ``cpu_seconds``;
    None when it cannot be told (intervals under ``shortest_s``: the kernel counts in 10 ms ticks)."""
    if wall_s < shortest_s or math.isnan(end[0] - start[0]):
        return None
    others = (end[0] - start[0]) - (end[1] - start[1])
    return min(1.0, max(0.0, others / (wall_s * cores)))


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    packages = ("onnxruntime", "torch", "numpy", "pillow", "fastapi", "uvicorn")
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "platform": platform.platform(),
        "versions": {"python": platform.python_version()} | {name: metadata.version(name) for name in packages},
        "gpu": gpu.describe(),
        "git": git_revision(),
    }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _model(path: Path) -> dict[str, Any] | None:
    from service.model import load_model

    if not path.is_file():
        return None
    info = load_model(path, ["cpu"]).info
    return {"path": str(path), "name": info.name, "backbone": info.backbone, "pooling": info.pooling,
            "precision": info.precision, "crop": info.preprocessing.crop, "classes": len(info.classes)}  # fmt: skip


def _measure(section: Section, context: Context, cores: int) -> dict[str, Any]:
    """One section's entry: its command, and its record or error (or why it was skipped), with its cost."""
    entry: dict[str, Any] = {"command": section.command_line(context)}
    if "int8_model" in section.reads and missing_model(context.int8_model, "--int8-model"):
        return {**entry, "skipped": missing_model(context.int8_model, "--int8-model")}
    entry["load_average"] = os.getloadavg()[0]
    log.info("section %s (load average %.2f)", section.name, entry["load_average"])
    begin, cpu_begin = time.perf_counter(), cpu_seconds()
    try:
        entry["result"] = section.run(context)
    except Exception as error:  # reported in the file and in the exit status
        log.exception("section %s failed", section.name)
        entry["error"] = f"{type(error).__name__}: {error}"
    entry["seconds"] = time.perf_counter() - begin
    entry["others_share"] = others_share(cpu_begin, cpu_seconds(), entry["seconds"], cores)
    return entry


def run(options: Options) -> dict[str, Any]:
    """Every requested section, in order; a failed section records its error and the others still run."""
    started, cpu_start, load_start = time.perf_counter(), cpu_seconds(), os.getloadavg()
    cores = len(os.sched_getaffinity(0))
    chosen = sorted((s for s in SECTIONS if s.name in options.sections), key=lambda s: options.sections.index(s.name))
    sections = {}
    for section in chosen:
        budget = options.budgets.get(section.name) or dict(section.quick if options.quick else section.full)
        sections[section.name] = _measure(section, Context(options.model, options.int8_model, budget), cores)
    return {
        "command": options.command,
        "generated": _now(),
        "quick": options.quick,
        "machine": machine(),
        "model": _model(options.model),
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "others_share": others_share(cpu_start, cpu_seconds(), time.perf_counter() - started, cores),
        "sections": sections,
        "wall_s": time.perf_counter() - started,
    }


def aims(results: dict[str, Any], sections: Sequence[Section] = SECTIONS) -> list[Aim]:
    """Every figure the sections set an aim for, with this run's value, and the run's own wall time."""
    found = [aim for section in sections for aim in section.aims(result_of(results, section.name))]
    wall = results.get("wall_s", math.nan) / 60 if set(NAMES) <= set(results["sections"]) else None
    return [*found, Aim("`make bench` wall time, every section (models already built)", wall, WALL_AIM_MIN, False,
                        " min")]  # fmt: skip


def _section(results: dict[str, Any], section: Section) -> list[str]:
    """A section: its heading, the command behind it, then its body (or why there is none)."""
    entry = results["sections"].get(section.name)
    lines = [f"## {section.title}", ""]
    if entry is None:
        return [*lines, "Not run (left out of this run's `--sections`).", ""]
    if "skipped" in entry:
        return [*lines, f"Not measured: {entry['skipped']}", ""]
    share, seconds = entry.get("others_share"), entry["seconds"]
    others = f"; other processes used {share:.0%} of the CPU meanwhile" if share is not None else ""
    lines += [f"Command: `{entry['command']}` ({seconds:.0f} s in this run{others}).", ""]
    if "error" in entry:
        return [*lines, f"**Failed:** {entry['error']}", ""]
    return [*lines, *section.render(entry["result"], results)]


def _machine(results: dict[str, Any]) -> list[str]:
    m, model = results["machine"], results["model"]
    starts = [entry["load_average"] for entry in results["sections"].values() if "load_average" in entry]
    rows = [
        ["CPU", f"{m['cpu']} ({m['usable_cores']} usable of {m['logical_cores']} logical cores)"],
        ["memory", f"{m['memory_gib']:.0f} GiB"],
        ["system", m["platform"]],
        ["software", ", ".join(f"{k} {v}" for k, v in m["versions"].items())],
        ["GPU", m["gpu"]],
        ["load average (1 min, this run's own processes included)",
         f"{results['load_average']['start'][0]:.2f} at the start, at most {max(starts, default=0):.2f} as a "
         f"section started, {results['load_average']['end'][0]:.2f} at the end"],
        ["CPU used by other processes", f"{pct(results.get('others_share'))} of the machine during the run"],
        ["source", f"git {m['git']}"],
    ]  # fmt: skip
    if model:
        described = f"{model['backbone']}, {model['pooling']}, {model['precision']}, {model['crop']} px crop"
        rows.append(["served model", f"`{model['path']}`: {model['name']} ({described}, {model['classes']} classes)"])
    return ["## Machine", "", *table(["", ""], rows), ""]


def section_text(results: dict[str, Any], one: Section) -> str:
    """One section as it reads in ``BENCHMARKS.md``."""
    return "\n".join(_section(results, one)).rstrip() + "\n"


def render(results: dict[str, Any], plot: str | None = PLOT_NAME) -> str:
    """The whole of ``BENCHMARKS.md``; ``plot`` is the image's path relative to it (None: no image)."""
    minutes, seconds = divmod(round(results.get("wall_s", 0)), 60)
    header = [
        "# Benchmarks",
        "",
        f"Generated by `{results['command']}` on {results['generated']} in {minutes} min {seconds:02d} s, on "
        f"{results['machine']['cpu']}. Every figure below was measured in that one run, on the same model and inputs "
        "(except the int8 agreement, which the int8 export measured and recorded in the model file); each section "
        "names the command that measures it on its own. Ratios measured side by side are the result; absolute "
        "numbers describe this machine. Regenerate with `make bench`.",
        "",
    ]
    if results.get("quick"):
        header += ["**Quick run** (`--quick`): tiny budgets, for checking the report, not for reading figures.", ""]
    summary = ["## Aims", "", "| figure | this run | aim | met |", "|---|---|---|---|"]
    summary += [aim.row() for aim in aims(results)]
    framed = {**results, "plot": plot}  # sections that show the plot read its path from here
    parts = [header, _machine(results), [*summary, ""], *(_section(framed, section) for section in SECTIONS)]
    return "\n".join(line for part in parts for line in part).rstrip() + "\n"


def plot_batches(results: dict[str, Any], path: Path) -> bool:
    """Writes throughput against batch size (raw, service, GPU when measured) as PNG; False when nothing to plot."""
    series = {
        "raw ONNX Runtime (CPU)": result_of(results, "batch"),
        "service (CPU)": result_of(results, "service_batch"),
    }
    series |= result_of(results, "gpu", "sweeps") or {}
    series = {name: points for name, points in series.items() if points}
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for name, points in series.items():
        axes.plot([p["batch_size"] for p in points], [p["images_per_second"] for p in points], marker="o", label=name)
    axes.set_xscale("log", base=2)
    axes.set_xticks(sorted({p["batch_size"] for points in series.values() for p in points}))
    axes.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes.set_xlabel("batch size (service: CASTREAM_MAX_BATCH_SIZE, 2x as many clients)")
    axes.set_ylabel("images / s")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend()
    axes.set_title(f"{results['model']['name']}, {results['machine']['usable_cores']} CPU cores")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return True


def write(results: dict[str, Any], out: Path, plot: Path | None, json_path: Path | None) -> None:
    """``BENCHMARKS.md``, and the plot and raw results where paths are given."""
    relative = os.path.relpath(plot, out.parent) if plot is not None and plot_batches(results, plot) else None
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2, default=float) + "\n")
    out.write_text(render(results, relative))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=Path("models/castream.onnx"), help="the served model")
    parser.add_argument("--int8-model", type=Path, default=Path("models/castream-int8.onnx"))
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--plot", type=Path, default=Path("benchmarks") / PLOT_NAME)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results.json"), help="raw results")
    parser.add_argument("--sections", default=",".join(NAMES), help=f"comma list from {', '.join(NAMES)}")
    parser.add_argument("--quick", action="store_true", help="tiny budgets and models: checks the pipeline only")
    args = parser.parse_args(argv)
    sections = tuple(name.strip() for name in args.sections.split(",") if name.strip())
    if unknown := sorted(set(sections) - set(NAMES)):
        parser.error(f"unknown --sections {unknown}; expected names from {', '.join(NAMES)}")
    if missing_model(args.model):
        parser.error(missing_model(args.model))
    setup_logging()
    quiet_third_party()
    command = shlex.join(["python", "-m", "benchmarks.report", *(sys.argv[1:] if argv is None else argv)])
    results = run(Options(args.model, args.int8_model, sections, args.quick, command))
    write(results, args.out, args.plot, args.json)
    failed = [name for name, entry in results["sections"].items() if "error" in entry]
    log.info("wrote %s in %.0f s%s", args.out, results["wall_s"], f"; failed: {failed}" if failed else "")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
