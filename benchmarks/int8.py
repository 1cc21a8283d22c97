"""int8 against fp32 on the served model: agreement from the int8 file's own export checks, speed timed here.

``python -m export.to_onnx --int8`` measures, before it writes the file, how often the int8 graph agrees
with the fp32 graph on the validation split (top-1, attention peak, attention correlation) and records it
in the file's ``verification`` metadata; this reads it back. The speed ratio is timed now, with
``export.timing.time_sessions`` (the sessions alternate round by round on the same preprocessed images),
at batch 1 and at ``batch_size``.

python -m benchmarks int8 --model models/castream.onnx --int8-model models/castream-int8.onnx
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.harness import model_inputs
from benchmarks.sections import Aim, Section, dig, fmt, pct, table
from export.agreement import Thresholds
from export.sessions import make_session
from export.timing import time_sessions
from service.model import load_model


def int8_verification(path: Path) -> dict[str, Any]:
    """The ``int8`` entry of a model's ``verification`` metadata (agreement, speed-up, thresholds).

    Raises:
        ValueError: the file is not an int8 export, or carries no int8 checks.
    """
    model = load_model(path, ["cpu"])
    if model.info.precision != "int8":
        raise ValueError(
            f"{str(path)!r} is a {model.info.precision} model; expected an int8 export (export.to_onnx --int8)"
        )
    checks = json.loads(model.session.get_modelmeta().custom_metadata_map.get("verification", "{}")).get("int8")
    if not checks:
        raise ValueError(f"{str(path)!r} records no int8 checks in its verification metadata; re-export it")
    return checks


def compare(
    model: Path, int8_model: Path, batch_size: int = 8, threads: int = 1, budget_s: float = 20.0
) -> dict[str, Any]:
    """Agreement recorded at export, and fp32/int8 latency and throughput timed side by side."""
    checks = int8_verification(int8_model)
    sessions = {
        name: make_session(path.read_bytes(), threads) for name, path in (("fp32", model), ("int8", int8_model))
    }
    images = model_inputs(model, batch_size)
    timings = [time_sessions(sessions, images[:1], budget_s / 3), time_sessions(sessions, images, budget_s * 2 / 3)]
    return {
        "threads": threads,
        "agreement": {key: checks.get(key) for key in ("images", "top1", "peak", "correlation")},
        "accuracy": {"fp32": checks.get("reference_accuracy"), "int8": checks.get("candidate_accuracy")},
        "thresholds": checks.get("thresholds"),
        "speedup_at_export": checks.get("speedup"),
        "timings": [
            {
                "batch_size": t.batch_size,
                "rounds": t.rounds,
                "fp32_ms": t.median_ms("fp32"),
                "int8_ms": t.median_ms("int8"),
                "fp32_images_per_second": t.images_per_second("fp32"),
                "int8_images_per_second": t.images_per_second("int8"),
                "int8_over_fp32": t.ratio("fp32", "int8"),
            }
            for t in timings
        ],
    }


def _aims(result: dict[str, Any] | None) -> list[Aim]:
    limits = Thresholds()
    return [
        Aim("int8 top-1 agreement with fp32 (served model)", dig(result, "agreement", "top1"), limits.top1, True),
        Aim("int8 attention-peak agreement (served model)", dig(result, "agreement", "peak"), limits.peak, True),
        Aim(
            "int8 attention correlation (served model)",
            dig(result, "agreement", "correlation"),
            limits.correlation,
            True,
        ),
    ]


def _render(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    agreement = r["agreement"]
    lines = [
        f"Agreement as measured by `python -m export.to_onnx --int8` on {agreement['images']} validation images "
        f"before it wrote the file: top-1 {pct(agreement['top1'])}, attention peak {pct(agreement['peak'])}, "
        f"mean attention correlation {fmt(agreement['correlation'], 4)} (accuracy fp32 {pct(r['accuracy']['fp32'])}, "
        f"int8 {pct(r['accuracy']['int8'])}). Speed timed in this run, {r['threads']} thread(s):",
        "",
    ]
    rows = [
        [
            str(t["batch_size"]),
            fmt(t["fp32_ms"], 2),
            fmt(t["int8_ms"], 2),
            fmt(t["fp32_images_per_second"]),
            fmt(t["int8_images_per_second"]),
            f"**{t['int8_over_fp32']:.2f}x**",
        ]
        for t in r["timings"]
    ]
    header = ["batch", "fp32 ms", "int8 ms", "fp32 images/s", "int8 images/s", "int8 / fp32 throughput"]
    return [*lines, *table(header, rows), ""]


SECTIONS = (
    Section(
        "int8",
        "int8 against fp32 on the served model",
        full={"budget_s": 15.0},
        quick={"budget_s": 0.5},
        run=lambda context: compare(context.model, context.int8_model, budget_s=context.budget["budget_s"]),
        render=_render,
        aims=_aims,
        reads=("model", "int8_model"),
    ),
)
