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
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import gpu, render
from benchmarks.load import LoadConfig

log = logging.getLogger("benchmarks.report")


@dataclass(frozen=True)
class Budget:
    """How much work each section may do; ``FULL`` fits in 15 minutes on two cores, ``QUICK`` in about one."""

    load_requests: int = 800
    load_seconds: float = 20.0
    stage_requests: int = 150
    stage_seconds: float = 20.0
    png_rounds: int = 2
    sweep_s: float = 24.0
    service_requests_per_image: int = 8
    service_seconds: float = 12.0  # what the scaling command gives it: half of sweep_s
    image_s: float = 12.0  # the same
    precision_s: float = 15.0
    onnx_backbone: str = "resnet50"
    onnx_size: int = 224
    onnx_s: float = 75.0
    train_backbone: str = "resnet50"
    train_size: int = 224
    train_batch: int = 16
    train_s: float = 45.0
    xai_backbone: str = "resnet50"
    xai_size: int = 224
    xai_images: int = 4
    xai_naive_images: int = 2
    xai_batch: int = 32


FULL = Budget()
QUICK = Budget(
    load_requests=24,
    load_seconds=5.0,
    stage_requests=12,
    stage_seconds=5.0,
    png_rounds=1,
    sweep_s=0.5,
    service_requests_per_image=2,
    service_seconds=3.0,
    image_s=0.5,
    precision_s=0.5,
    onnx_backbone="resnet18",
    onnx_size=64,
    onnx_s=1.0,
    train_backbone="resnet18",
    train_size=64,
    train_batch=4,
    train_s=0.5,
    xai_backbone="resnet18",
    xai_size=32,
    xai_images=2,
    xai_batch=8,
)
SECTIONS = (
    "load",
    "stages",
    "overlay_png",
    "batch",
    "service_batch",
    "image_size",
    "precision",
    "onnx_speed",
    "train_speed",
    "insertion_deletion",
    "gpu",
)


@dataclass(frozen=True)
class Options:
    model: Path
    int8_model: Path | None
    budget: Budget
    sections: tuple[str, ...] = SECTIONS
    quick: bool = False
    command: str = "python -m benchmarks.report"


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
    from training.pipeline import git_revision

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


def section_runners(options: Options) -> dict[str, tuple[str, Callable[[], Any]]]:
    """Per section: the command that measures it on its own, and the call that measures it here."""
    from benchmarks import insertion_deletion, load, onnx_speed, precision, scaling, stages, train_speed
    from benchmarks.scaling import BATCH_SIZES

    b, model = options.budget, options.model
    config = LoadConfig(model=model, requests=b.load_requests, seconds=b.load_seconds)
    staged = replace(config, seconds=b.stage_seconds)
    int8 = options.int8_model
    commands = {
        "load": f"python -m benchmarks.load --model {model} --requests {b.load_requests} --seconds {b.load_seconds:g}",
        "stages": f"python -m benchmarks.stages --model {model} --requests {b.stage_requests} "
        f"--seconds {b.stage_seconds:g}",
        "scaling": f"python -m benchmarks.scaling --model {model} --budget-s {b.sweep_s:g}",
        "precision": f"python -m benchmarks.precision --model {model} --int8-model {int8} --budget-s {b.precision_s:g}",
        "onnx_speed": f"python -m benchmarks.onnx_speed --backbone {b.onnx_backbone} --image-size {b.onnx_size} "
        f"--budget-s {b.onnx_s:g} --json",
        "train_speed": f"python -m benchmarks.train_speed --backbone {b.train_backbone} --image-size {b.train_size} "
        f"--batch-size {b.train_batch} --budget-s {b.train_s:g}",
        "insertion_deletion": f"python -m benchmarks.insertion_deletion --backbone {b.xai_backbone} --size "
        f"{b.xai_size} --images {b.xai_images} --naive-images {b.xai_naive_images} --batch-size {b.xai_batch} --json",
        "gpu": f"python -m benchmarks.gpu --model {model} --budget-s {b.sweep_s:g}",
    }
    return {
        "load": (commands["load"], lambda: load.run(config)),
        "stages": (
            commands["stages"],
            lambda: stages.request_stages(staged, stages.MODES, b.stage_requests, b.stage_seconds),
        ),
        "overlay_png": (
            commands["stages"],
            lambda: stages.overlay_png_levels(
                staged, {"before": 6, "after": 1}, b.stage_requests, b.stage_seconds, b.png_rounds
            ),
        ),
        "batch": (commands["scaling"], lambda: scaling.batch_sweep(model, budget_s=b.sweep_s)),
        "service_batch": (
            commands["scaling"],
            lambda: scaling.service_batch_sweep(config, BATCH_SIZES, b.service_requests_per_image, b.service_seconds),
        ),
        "image_size": (commands["scaling"], lambda: scaling.image_size_sweep(model, budget_s=b.image_s)),
        "precision": (commands["precision"], lambda: precision.compare(model, int8, budget_s=b.precision_s)),
        "onnx_speed": (
            commands["onnx_speed"],
            lambda: onnx_speed.run(b.onnx_backbone, b.onnx_size, budget_s=b.onnx_s).to_dict(),
        ),
        "train_speed": (
            commands["train_speed"],
            lambda: asdict(train_speed.run(b.train_backbone, b.train_size, b.train_batch, b.train_s)),
        ),
        "insertion_deletion": (
            commands["insertion_deletion"],
            lambda: asdict(
                insertion_deletion.run(
                    images=b.xai_images,
                    naive_images=b.xai_naive_images,
                    size=b.xai_size,
                    backbone=b.xai_backbone,
                    batch_size=b.xai_batch,
                )
            ),
        ),
        "gpu": (commands["gpu"], lambda: gpu.measure(model, budget_s=b.sweep_s)),
    }


def run(options: Options) -> dict[str, Any]:
    """Every requested section, in order; a failed section records its error and the others still run."""
    from service.model import load_model

    started, cpu_start = time.perf_counter(), cpu_seconds()
    cores = len(os.sched_getaffinity(0))
    load_start = os.getloadavg()
    info = load_model(options.model, ["cpu"]).info
    runners = section_runners(options)
    sections: dict[str, dict[str, Any]] = {}
    samples = [load_start[0]]  # the 1-minute load average as each section starts: was the machine quiet?
    for name in options.sections:
        command, call = runners[name]
        if name == "precision" and (options.int8_model is None or not options.int8_model.is_file()):
            sections[name] = {"command": command, "skipped": f"no int8 model at {options.int8_model}"}
            continue
        samples.append(os.getloadavg()[0])
        log.info("section %s (load average %.2f)", name, samples[-1])
        begin, cpu_begin = time.perf_counter(), cpu_seconds()
        try:
            sections[name] = {"command": command, "result": call()}
        except Exception as error:  # reported in the file and in the exit status
            log.exception("section %s failed", name)
            sections[name] = {"command": command, "error": f"{type(error).__name__}: {error}"}
        seconds = sections[name]["seconds"] = time.perf_counter() - begin
        sections[name]["others_share"] = others_share(cpu_begin, cpu_seconds(), seconds, cores)
    return {
        "command": options.command,
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": options.quick,
        "budget": asdict(options.budget),
        "machine": machine(),
        "model": {
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


def write(results: dict[str, Any], out: Path, plot: Path | None, json_path: Path | None) -> None:
    """``BENCHMARKS.md`` (and the plot and raw results, when paths are given)."""
    relative = None
    if plot is not None and render.plot_batches(results, plot):
        relative = os.path.relpath(plot, out.parent)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2, default=float) + "\n")
    out.write_text(render.render(results, relative))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=Path("models/castream.onnx"), help="the served model")
    parser.add_argument("--int8-model", type=Path, default=Path("models/castream-int8.onnx"))
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--plot", type=Path, default=Path("benchmarks") / render.PLOT_NAME)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results.json"), help="raw results")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list from {', '.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="tiny budgets and models: checks the pipeline only")
    args = parser.parse_args(argv)
    sections = tuple(name.strip() for name in args.sections.split(",") if name.strip())
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown --sections {unknown}; expected names from {', '.join(SECTIONS)}")
    if not args.model.is_file():
        parser.error(f"--model {str(args.model)!r} does not exist; build it with `make export`")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("onnxscript", "onnx_ir", "onnxruntime", "torch.onnx", "torch.export", "torch._dynamo"):
        logging.getLogger(name).setLevel(logging.WARNING)
    command = shlex.join(["python", "-m", "benchmarks.report", *(sys.argv[1:] if argv is None else argv)])
    options = Options(args.model, args.int8_model, QUICK if args.quick else FULL, sections, args.quick, command)
    results = run(options)
    write(results, args.out, args.plot, args.json)
    failed = [name for name, section in results["sections"].items() if "error" in section]
    log.info("wrote %s in %.0f s%s", args.out, results["wall_s"], f"; failed: {failed}" if failed else "")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
