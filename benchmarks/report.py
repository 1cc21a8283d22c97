"""``make bench``: every figure of ``BENCHMARKS.md`` measured in one run, on one machine, with a plot.

Runs every section (each module's ``SECTIONS``) in turn on the same model and inputs, each bounded in requests
and seconds; records the machine, its load and each section's command; writes ``BENCHMARKS.md``, the
throughput-against-batch-size plot and the raw results. A failed section is reported and fails the command.

python -m benchmarks.report                               # the full run
python -m benchmarks.report --quick --out /tmp/bench.md   # tiny budgets: checks the pipeline, not the figures
python -m benchmarks.report --sections load,stages        # only some sections
"""

from __future__ import annotations

import argparse
import importlib
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

from benchmarks.scaling import describe_gpu
from benchmarks.sections import FILES, Aim, Section, body, missing_model, pct, result_of, table
from training.logs import quiet_third_party, setup_logging
from training.precision import cpu_model
from training.revision import git_revision

log = logging.getLogger("benchmarks.report")

# The report's modules, in its order; each declares its sections.
MODULES = ("serving", "ceiling", "timeline", "scaling", "decoding", "speed", "explanations", "soak")
SECTIONS: tuple[Section, ...] = tuple(
    section for name in MODULES for section in importlib.import_module(f"benchmarks.{name}").SECTIONS
)
NAMES = tuple(section.name for section in SECTIONS)
PLOT_NAME = "throughput_vs_batch.png"
RAW = argparse.RawDescriptionHelpFormatter
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
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    own = sum(u.ru_utime + u.ru_stime for u in usage)  # microseconds apart, where os.times counts in ticks
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
    versions = {"python": platform.python_version()} | {name: metadata.version(name) for name in packages}
    return {"cpu": cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, "versions": versions,
            "platform": platform.platform(), "gpu": describe_gpu(), "git": git_revision()}  # fmt: skip


def _model(path: Path) -> dict[str, Any] | None:
    from service.model import load_model

    if not path.is_file():
        return None
    info = load_model(path, ["cpu"]).info
    return {"path": str(path), "name": info.name, "backbone": info.backbone, "pooling": info.pooling,
            "precision": info.precision, "crop": info.preprocessing.crop, "classes": len(info.classes)}  # fmt: skip


def _measure(section: Section, files: dict[str, Path | None], budget: dict[str, Any], cores: int) -> dict[str, Any]:
    """One section's entry: its command, and its record or error (or why it was skipped), with its cost."""
    entry: dict[str, Any] = {"command": section.command_line(files, budget)}
    if "int8_model" in section.reads and (why := missing_model(files["int8_model"], "--int8-model")):
        return {**entry, "skipped": why}
    entry["load_average"] = os.getloadavg()[0]
    log.info("section %s (load average %.2f)", section.name, entry["load_average"])
    begin, cpu_begin = time.perf_counter(), cpu_seconds()
    try:
        entry["result"] = section.measure(**{name: files[name] for name in section.reads}, **budget)
    except Exception as error:  # reported in the file and in the exit status
        log.exception("section %s failed", section.name)
        entry["error"] = f"{type(error).__name__}: {error}"
    entry["seconds"] = time.perf_counter() - begin
    entry["others_share"] = others_share(cpu_begin, cpu_seconds(), entry["seconds"], cores)
    return entry


def run(options: Options) -> dict[str, Any]:
    """Every requested section, in order; a failed section records its error and the others still run."""
    started, cpu_start, load_start = time.perf_counter(), cpu_seconds(), os.getloadavg()
    cores, files = len(os.sched_getaffinity(0)), {"model": options.model, "int8_model": options.int8_model}
    chosen = sorted((s for s in SECTIONS if s.name in options.sections), key=lambda s: options.sections.index(s.name))
    sections = {s.name: _measure(s, files, options.budgets.get(s.name) or s.budget(options.quick), cores)
                for s in chosen}  # fmt: skip
    return {"command": options.command, "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "quick": options.quick, "machine": machine(), "model": _model(options.model),
            "load_average": {"start": load_start, "end": os.getloadavg()},
            "others_share": others_share(cpu_start, cpu_seconds(), time.perf_counter() - started, cores),
            "sections": sections, "wall_s": time.perf_counter() - started}  # fmt: skip


def aims(results: dict[str, Any], sections: Sequence[Section] = SECTIONS) -> list[Aim]:
    """Every figure the sections set an aim for, with this run's value, and the run's own wall time."""
    found = [aim for section in sections for aim in section.aims(result_of(results, section.name))]
    wall = results.get("wall_s", math.nan) / 60 if set(NAMES) <= set(results["sections"]) else None
    return [*found, Aim("`make bench` wall time, every section (models already built)", wall, WALL_AIM_MIN, False,
                        " min")]  # fmt: skip


def _section(results: dict[str, Any], section: Section) -> list[str]:
    """A section: its heading, the command behind it, then its body (or why there is none)."""
    entry, heading = results["sections"].get(section.name), f"## {section.title}"
    if entry is None:
        return body(heading, "Not run (left out of this run's `--sections`).")
    if "skipped" in entry:
        return body(heading, f"Not measured: {entry['skipped']}")
    share = entry.get("others_share")
    others = f"; other processes used {share:.0%} of the CPU meanwhile" if share is not None else ""
    command = f"Command: `{entry['command']}` ({entry['seconds']:.0f} s in this run{others})."
    if "error" in entry:
        return body(heading, command, f"**Failed:** {entry['error']}")
    return [*body(heading, command), *section.render(entry["result"], results)]


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
    return body("## Machine", table(["", ""], rows))


def render(results: dict[str, Any], plot: str | None = PLOT_NAME) -> str:
    """The whole of ``BENCHMARKS.md``; ``plot`` is the image's path relative to it (None: no image)."""
    minutes, seconds = divmod(round(results.get("wall_s", 0)), 60)
    header = body(
        "# Benchmarks",
        f"Generated by `{results['command']}` on {results['generated']} in {minutes} min {seconds:02d} s, on "
        f"{results['machine']['cpu']}. Every figure below was measured in that one run, on the same model and inputs "
        "(except the int8 agreement, which the int8 export measured and recorded in the model file); each section "
        "names the command that measures it on its own. Ratios measured side by side are the result; absolute "
        "numbers describe this machine. Regenerate with `make bench`.",
        "**Quick run** (`--quick`): tiny budgets, for checking the report, not for reading figures."
        if results.get("quick") else "",
    )  # fmt: skip
    summary = body("## Aims", ["| figure | this run | aim | met |", "|---|---|---|---|", *map(Aim.row, aims(results))])
    framed = {**results, "plot": plot}  # sections that show the plot read its path from here
    parts = [header, _machine(results), summary, *(_section(framed, section) for section in SECTIONS)]
    return "\n".join(line for part in parts for line in part).rstrip() + "\n"


def plot_batches(results: dict[str, Any], path: Path) -> bool:
    """Writes throughput against batch size (raw, service, GPU when measured) as PNG; False when nothing to plot."""
    gpu = result_of(results, "gpu", "sweeps") or {}
    series = {
        "raw ONNX Runtime (CPU)": result_of(results, "batch"),
        "service (CPU)": result_of(results, "service_batch"),
    }
    series = {name: points for name, points in (series | gpu).items() if points}
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for name, points in series.items():
        axes.plot([p["batch_size"] for p in points], [p["images_per_second"] for p in points], marker="o", label=name)
    axes.set_xscale("log", base=2)
    axes.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes.set(xticks=sorted({p["batch_size"] for points in series.values() for p in points}), ylim=(0, None),
             xlabel="batch size (service: CASTREAM_MAX_BATCH_SIZE, 2x as many clients)", ylabel="images / s",
             title=f"{results['model']['name']}, {results['machine']['usable_cores']} CPU cores")  # fmt: skip
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return True


def write(results: dict[str, Any], out: Path | None, plot: Path | None, json_path: Path | None) -> None:
    """``BENCHMARKS.md``, the plot and the raw results, each where a path is given."""
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2, default=float) + "\n")
    if out is not None:
        relative = os.path.relpath(plot, out.parent) if plot is not None and plot_batches(results, plot) else None
        out.write_text(render(results, relative))


def _arguments(parser: argparse.ArgumentParser, reads: tuple[str, ...] = FILES) -> None:
    """The flags every command has: the model files it reads, ``--quick`` and ``--json``."""
    if "model" in reads:
        parser.add_argument("--model", type=Path, default=Path("models/castream.onnx"), help="the served model")
    if "int8_model" in reads:
        parser.add_argument("--int8-model", type=Path, default=Path("models/castream-int8.onnx"))
    parser.add_argument("--quick", action="store_true", help="the quick budgets: check the code, not the figures")


def _parsed(parser: argparse.ArgumentParser, argv: list[str] | None, prog: str) -> tuple[argparse.Namespace, str]:
    """The arguments, checked, with logging set up; and the command line as typed."""
    args = parser.parse_args(argv)
    if (model := getattr(args, "model", None)) is not None and missing_model(model):
        parser.error(missing_model(model))
    setup_logging()
    quiet_third_party()
    return args, shlex.join(["python", "-m", prog, *(sys.argv[1:] if argv is None else argv)])


def section_main(argv: list[str] | None = None, description: str | None = None) -> int:
    """``python -m benchmarks NAME``: one section with its flags (the keywords of its ``measure``), printed."""
    top = argparse.ArgumentParser(prog="python -m benchmarks", description=description, formatter_class=RAW)
    names = top.add_subparsers(dest="section", required=True, metavar="NAME")
    for section in SECTIONS:
        sub = names.add_parser(section.name, help=section.title)
        _arguments(sub, section.reads)
        for key, default in section.options.items():
            several = isinstance(default, list | tuple)
            quick = f" (--quick: {section.quick[key]})" if key in section.quick else ""
            sub.add_argument(f"--{key.replace('_', '-')}", dest=key, nargs="+" if several else None,
                             type=Path if default is None else type(default[0]) if several else type(default),
                             help=f"default {' '.join(map(str, default)) if several else default}{quick}")  # fmt: skip
        sub.add_argument("--json", type=Path, help="also write the raw results here")
    args, words = _parsed(top, argv, "benchmarks")
    section = next(s for s in SECTIONS if s.name == args.section)
    budget = section.budget(args.quick) | {k: getattr(args, k) for k in section.options if getattr(args, k) is not None}
    model, int8_model = getattr(args, "model", None) or Path(), getattr(args, "int8_model", None)
    results = run(Options(model, int8_model, (section.name,), args.quick, words, {section.name: budget}))
    write(results, None, None, args.json)
    print("\n".join(_section(results, section)).rstrip())
    return 1 if "error" in results["sections"][section.name] else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.report``: every section (or those named), written to ``BENCHMARKS.md``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__, formatter_class=RAW)
    _arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--plot", type=Path, default=Path("benchmarks") / PLOT_NAME)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results.json"), help="raw results")
    parser.add_argument("--sections", default=",".join(NAMES), help=f"comma list from {', '.join(NAMES)}")
    args, command = _parsed(parser, argv, "benchmarks.report")
    sections = tuple(name.strip() for name in args.sections.split(",") if name.strip())
    if unknown := sorted(set(sections) - set(NAMES)):
        parser.error(f"unknown --sections {unknown}; expected names from {', '.join(NAMES)}")
    results = run(Options(args.model, args.int8_model, sections, args.quick, command))
    write(results, args.out, args.plot, args.json)
    failed = [name for name, entry in results["sections"].items() if "error" in entry]
    log.info("wrote %s in %.0f s%s", args.out, results["wall_s"], f"; failed: {failed}" if failed else "")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
