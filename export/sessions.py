"""ONNX Runtime sessions for checking and timing exported graphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from service.contract import CPU, CUDA, INPUT

__all__ = ["CPU", "CUDA", "make_session", "run_batches"]


def make_session(
    model: onnx.ModelProto | bytes, threads: int = 0, providers: list[str] | None = None
) -> ort.InferenceSession:
    """A session on ``model``; ``threads`` 0 lets ONNX Runtime choose, 1 gives the steadiest timings."""
    if threads < 0:
        raise ValueError(f"threads must be 0 (automatic) or positive, got {threads!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the fp16 and int8 graphs trigger harmless warnings
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(data, options, providers=providers or [CPU])


def run_batches(session: ort.InferenceSession, images: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Runs ``images`` (N, 3, S, S) through ``session`` ``batch_size`` at a time; outputs by name, concatenated."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}")
    names = [output.name for output in session.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, len(images), batch_size):
        outputs = session.run(names, {INPUT: images[start : start + batch_size]})
        for name, value in zip(names, outputs, strict=True):
            parts[name].append(value)
    return {name: np.concatenate(values) for name, values in parts.items()}
