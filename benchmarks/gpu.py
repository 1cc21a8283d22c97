"""The served model on a GPU (ONNX Runtime's CUDA provider, fp32 and an fp16 export, batch 1 to 32), or why not.

Nothing is estimated: without a CUDA device and ONNX Runtime's CUDA provider (the ``serve-gpu`` extra) the
result says that nothing was measured, and why.

python -m benchmarks gpu --model models/castream.onnx [--fp16-model models/castream-fp16.onnx]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.scaling import BATCH_SIZES, batch_sweep
from benchmarks.sections import Section, fmt, table
from service.contract import CUDA


def describe() -> str:
    """The GPUs torch sees and the providers ONNX Runtime offers, in one line."""
    import onnxruntime as ort
    import torch

    providers = ", ".join(ort.get_available_providers())
    if not torch.cuda.is_available():
        return f"none (torch.cuda.is_available() is False; ONNX Runtime providers: {providers})"
    names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
    return f"{', '.join(names)} (ONNX Runtime providers: {providers})"


def plan(available_providers: list[str], cuda_devices: int) -> tuple[bool, str]:
    """Whether anything can be measured, and why not when nothing can."""
    if cuda_devices == 0:
        return False, "no CUDA device on this machine"
    if CUDA not in available_providers:
        return False, (
            f"a CUDA device is present but ONNX Runtime offers only {available_providers}; install the "
            "`serve-gpu` extra (onnxruntime-gpu) to measure the CUDA provider"
        )
    return True, ""


def measure(model: Path, fp16_model: Path | None = None, budget_s: float = 20.0) -> dict[str, Any]:
    """Batch sweeps on the CUDA provider, or ``{"measured": False, "reason": ...}``."""
    import onnxruntime as ort
    import torch

    measurable, reason = plan(ort.get_available_providers(), torch.cuda.device_count())
    if not measurable:
        return {"measured": False, "reason": reason}
    sweeps = {"fp32 (CUDA)": batch_sweep(model, BATCH_SIZES, ["cuda"], budget_s=budget_s)}
    notes = []
    if fp16_model is not None and fp16_model.is_file():
        sweeps["fp16 (CUDA)"] = batch_sweep(fp16_model, BATCH_SIZES, ["cuda"], budget_s=budget_s)
    else:
        notes.append("fp16: no fp16 export given (`python -m export.to_onnx --fp16`), not measured")
    return {"measured": True, "sweeps": sweeps, "notes": notes}


def _render(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if not r.get("measured"):
        return [f"**Not measured**: {r['reason']}. No GPU figure is estimated.", ""]
    for name, points in r["sweeps"].items():
        lines += [f"{name}:", ""]
        rows = [[str(p["batch_size"]), fmt(p["images_per_second"]), fmt(p["p50_ms"]), fmt(p["p99_ms"])] for p in points]
        lines += [*table(["batch", "images/s", "p50 ms", "p99 ms"], rows), ""]
    lines += [f"- {note}" for note in r.get("notes", [])]
    return [*lines, ""]


SECTIONS = (
    Section(
        "gpu",
        "GPU",
        full={"budget_s": 24.0, "fp16_model": ""},
        quick={"budget_s": 0.5, "fp16_model": ""},
        run=lambda context: measure(
            context.model, Path(context.budget["fp16_model"] or "."), budget_s=context.budget["budget_s"]
        ),
        render=_render,
    ),
)
