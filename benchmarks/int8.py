"""int8 against fp32 on the served model: the agreement that ``python -m export.to_onnx --int8`` measured before it
wrote the int8 file (recorded in its ``verification`` metadata), and the speed of both timed side by side here."""

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

AIMS = {"top1": "top-1 agreement with fp32", "peak": "attention-peak agreement", "correlation": "attention correlation"}


def int8_verification(path: Path) -> dict[str, Any]:
    """The ``int8`` entry of an int8 export's ``verification`` metadata (agreement, speed-up, thresholds)."""
    model = load_model(path, ["cpu"])
    if model.info.precision != "int8":
        precision = model.info.precision
        raise ValueError(f"{str(path)!r} is a {precision} model; expected an int8 export (export.to_onnx --int8)")
    checks = json.loads(model.session.get_modelmeta().custom_metadata_map.get("verification", "{}")).get("int8")
    if not checks:
        raise ValueError(f"{str(path)!r} records no int8 checks in its verification metadata; re-export it")
    return checks


def compare(
    model: Path, int8_model: Path, batch_size: int = 8, threads: int = 1, budget_s: float = 15.0
) -> dict[str, Any]:
    """The agreement recorded at export; latency and throughput of both on the same preprocessed images, in
    alternating rounds, at batch 1 (a third of ``budget_s``) and at ``batch_size`` (the rest)."""
    checks = int8_verification(int8_model)
    files = {"fp32": model, "int8": int8_model}
    sessions = {name: make_session(path.read_bytes(), threads) for name, path in files.items()}
    images = model_inputs(model, batch_size)
    timings = [time_sessions(sessions, images[:1], budget_s / 3), time_sessions(sessions, images, budget_s * 2 / 3)]
    return {
        "threads": threads,
        "agreement": {key: checks.get(key) for key in ("images", "top1", "peak", "correlation")},
        "accuracy": {"fp32": checks.get("reference_accuracy"), "int8": checks.get("candidate_accuracy")},
        "thresholds": checks.get("thresholds"), "speedup_at_export": checks.get("speedup"),
        "timings": [{"batch_size": t.batch_size, "rounds": t.rounds, "fp32_ms": t.median_ms("fp32"),
                     "int8_ms": t.median_ms("int8"), "fp32_images_per_second": t.images_per_second("fp32"),
                     "int8_images_per_second": t.images_per_second("int8"), "int8_over_fp32": t.ratio("fp32", "int8")}
                    for t in timings],
    }  # fmt: skip


def _render(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    agreement = r["agreement"]
    rows = [[str(t["batch_size"]), fmt(t["fp32_ms"], 2), fmt(t["int8_ms"], 2), fmt(t["fp32_images_per_second"]),
             fmt(t["int8_images_per_second"]), f"**{t['int8_over_fp32']:.2f}x**"] for t in r["timings"]]  # fmt: skip
    return [
        f"Agreement as measured by `python -m export.to_onnx --int8` on {agreement['images']} validation images "
        f"before it wrote the file: top-1 {pct(agreement['top1'])}, attention peak {pct(agreement['peak'])}, "
        f"mean attention correlation {fmt(agreement['correlation'], 4)} (accuracy fp32 {pct(r['accuracy']['fp32'])}, "
        f"int8 {pct(r['accuracy']['int8'])}). Speed timed in this run, {r['threads']} thread(s):",
        "",
        *table(["batch", "fp32 ms", "int8 ms", "fp32 images/s", "int8 images/s", "int8 / fp32 throughput"], rows),
        "",
    ]


def _aims(r: dict[str, Any] | None) -> list[Aim]:
    limits = Thresholds()
    return [Aim(f"int8 {name} (served model)", dig(r, "agreement", key), getattr(limits, key), True)
            for key, name in AIMS.items()]  # fmt: skip


SECTIONS = (Section("int8", "int8 against fp32 on the served model", compare, {"budget_s": 0.5}, _render, _aims),)
