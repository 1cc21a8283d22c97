"""``make bench``: every speed figure of the project in one run, written to ``BENCHMARKS.md`` with a plot.

Runs the benchmark scripts one after the other on the same model and inputs, each bounded in requests and
seconds, the service only on loopback; records the machine, its load average and the command behind each
section; then renders ``BENCHMARKS.md`` (``benchmarks.render``) and the throughput-against-batch-size
plot. A section that fails is reported as failed in the file and makes the command exit with status 1.

python -m benchmarks.report                               # the full run (under 15 minutes on 2 cores)
python -m benchmarks.report --quick --out /tmp/bench.md   # tiny budgets: checks the pipeline in a minute
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import (
    class_maps,
    explain_speed,
    gpu,
    insertion_deletion,
    int8,
    load,
    onnx_speed,
    render,
    scaling,
    stages,
    studies,
    train_speed,
)
from benchmarks.sections import Context, Section, missing_model
from training.logs import quiet_third_party, setup_logging
from training.revision import git_revision

log = logging.getLogger("benchmarks.report")


# The report's sections, in its order; each benchmark module declares its own. Recorded ones come last.
SECTIONS: tuple[Section, ...] = (
    *load.SECTIONS,
    *stages.SECTIONS,
    *scaling.SECTIONS,
    *int8.SECTIONS,
    *onnx_speed.SECTIONS,
    *train_speed.SECTIONS,
    *insertion_deletion.SECTIONS,
    *gpu.SECTIONS,
    *class_maps.SECTIONS,
    *explain_speed.SECTIONS,
    *studies.SECTIONS,
)
NAMES = tuple(section.name for section in SECTIONS)
MEASURED = tuple(section.name for section in SECTIONS if not section.recorded)  # what `make bench` runs
RECORDED = tuple(section.name for section in SECTIONS if section.recorded)


@dataclass(frozen=True)
class Options:
    model: Path
    int8_model: Path | None
    sections: tuple[str, ...] = MEASURED
    quick: bool = False  # each section's quick budget: checks the pipeline, not the figures
    command: str = "python -m benchmarks.report"
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)  # a section's budget, where not its own


def cpu_seconds() -> tuple[float, float]:
    """``(busy CPU seconds of the whole machine since boot, CPU seconds of this process and its finished
    children)``; the machine's figure is NaN where ``/proc/stat`` does not exist."""
    own = sum(
        getattr(resource.getrusage(who), field)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for field in ("ru_utime", "ru_stime")
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
    """Share of the machine's CPU capacity that processes other than this run used between two ``cpu_seconds``.

    None when it cannot be told: intervals under ``shortest_s`` (the kernel counts in 10 ms ticks) or no
    ``/proc/stat``.
    """
    if wall_s < shortest_s or math.isnan(end[0] - start[0]):
        return None
    others = (end[0] - start[0]) - (end[1] - start[1])
    return min(1.0, max(0.0, others / (wall_s * cores)))


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        cpu = names[0] if names else cpu
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    packages = ("onnxruntime", "torch", "numpy", "pillow", "fastapi", "uvicorn")
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": memory,
        "platform": platform.platform(),
        "versions": {"python": platform.python_version()} | {name: metadata.version(name) for name in packages},
        "gpu": gpu.describe(),
        "git": git_revision(),
    }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def run(options: Options) -> dict[str, Any]:
    """Every requested section, in order; a failed section records its error and the others still run."""
    from service.model import load_model

    started, cpu_start = time.perf_counter(), cpu_seconds()
    cores = len(os.sched_getaffinity(0))
    load_start = os.getloadavg()
    info = load_model(options.model, ["cpu"]).info if options.model.is_file() else None
    chosen = [section for section in SECTIONS if section.name in options.sections]
    chosen.sort(key=lambda section: options.sections.index(section.name))
    budgets = {
        section.name: options.budgets.get(section.name) or dict(section.quick if options.quick else section.full)
        for section in chosen
    }
    sections: dict[str, dict[str, Any]] = {}
    samples = [load_start[0]]  # the 1-minute load average as each section starts: was the machine quiet?
    for section in chosen:
        name = section.name
        context = Context(options.model, options.int8_model, budgets[name])
        command = section.command_line(context)
        skipped = section.skip(context)
        if skipped:
            sections[name] = {"command": command, "skipped": skipped}
            continue
        samples.append(os.getloadavg()[0])
        log.info("section %s (load average %.2f)", name, samples[-1])
        begin, cpu_begin = time.perf_counter(), cpu_seconds()
        try:
            sections[name] = {"command": command, "result": section.run(context), "generated": _now()}
        except Exception as error:  # reported in the file and in the exit status
            log.exception("section %s failed", name)
            sections[name] = {"command": command, "error": f"{type(error).__name__}: {error}"}
        seconds = sections[name]["seconds"] = time.perf_counter() - begin
        sections[name]["others_share"] = others_share(cpu_begin, cpu_seconds(), seconds, cores)
    return {
        "command": options.command,
        "generated": _now(),
        "quick": options.quick,
        "budget": budgets,
        "machine": machine(),
        "model": info
        and {
            "path": str(options.model),
            "name": info.name,
            "backbone": info.backbone,
            "pooling": info.pooling,
            "precision": info.precision,
            "crop": info.preprocessing.crop,
            "classes": len(info.classes),
        },
        "load_average": {"start": load_start, "end": os.getloadavg(), "section_starts": samples},
        "others_share": others_share(cpu_start, cpu_seconds(), time.perf_counter() - started, cores),
        "sections": sections,
        "wall_s": time.perf_counter() - started,
    }


def keep_recorded(results: dict[str, Any], previous: Path | None) -> dict[str, Any]:
    """``results`` with the records of recorded sections it did not measure, from the ``previous`` results file."""
    if previous is None or not previous.is_file():
        return results
    stored = json.loads(previous.read_text()).get("sections", {})
    kept = {name: stored[name] for name in RECORDED if name in stored and name not in results["sections"]}
    return {**results, "sections": {**results["sections"], **kept}}


def write(results: dict[str, Any], out: Path, plot: Path | None, json_path: Path | None) -> None:
    """``BENCHMARKS.md`` (and the plot and raw results, when paths are given); recorded sections are kept."""
    results = keep_recorded(results, json_path)
    relative = None
    if plot is not None and render.plot_batches(results, plot):
        relative = os.path.relpath(plot, out.parent)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2, default=float) + "\n")
    out.write_text(render.render(results, SECTIONS, relative))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=Path("models/castream.onnx"), help="the served model")
    parser.add_argument("--int8-model", type=Path, default=Path("models/castream-int8.onnx"))
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--plot", type=Path, default=Path("benchmarks") / render.PLOT_NAME)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results.json"), help="raw results")
    parser.add_argument(
        "--sections",
        default=",".join(MEASURED),
        help=f"comma list from {', '.join(NAMES)} (default: all but the recorded studies, {', '.join(RECORDED)}, "
        "which are kept from --json)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny budgets and models: checks the pipeline only")
    args = parser.parse_args(argv)
    sections = tuple(name.strip() for name in args.sections.split(",") if name.strip())
    unknown = sorted(set(sections) - set(NAMES))
    if unknown:
        parser.error(f"unknown --sections {unknown}; expected names from {', '.join(NAMES)}")
    if missing_model(args.model):
        parser.error(missing_model(args.model))
    setup_logging()
    quiet_third_party()
    command = shlex.join(["python", "-m", "benchmarks.report", *(sys.argv[1:] if argv is None else argv)])
    options = Options(args.model, args.int8_model, sections, args.quick, command)
    results = run(options)
    write(results, args.out, args.plot, args.json)
    failed = [name for name, section in results["sections"].items() if "error" in section]
    log.info("wrote %s in %.0f s%s", args.out, results["wall_s"], f"; failed: {failed}" if failed else "")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
