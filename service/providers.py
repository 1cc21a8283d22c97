"""Choosing ONNX Runtime execution providers from ``CASTREAM_PROVIDERS``."""

from __future__ import annotations

import onnxruntime as ort

from service.contract import CPU, CUDA
from service.metadata import ModelError

ALIASES = {
    "cpu": CPU,
    "cuda": CUDA,
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
}


def requested_providers(names: list[str]) -> tuple[list[str], bool]:
    """Providers to ask the session for, in order, and whether they were chosen automatically."""
    available = ort.get_available_providers()
    if names == ["auto"]:
        return ([CUDA, CPU] if CUDA in available else [CPU]), True
    resolved = [ALIASES.get(name.lower(), name) for name in names]
    missing = [name for name in resolved if name not in available]
    if missing:
        raise ModelError(
            f"CASTREAM_PROVIDERS asks for {missing}, which this onnxruntime build lacks; available: {available} "
            "(use 'auto', or install onnxruntime-gpu instead of onnxruntime for CUDA)"
        )
    return resolved, False


def check_loaded(requested: list[str], in_use: list[str], auto: bool) -> None:
    """An explicitly requested provider that did not load is an error; in auto mode CPU is the fallback."""
    if auto:
        return
    dropped = [name for name in requested if name not in in_use]
    if dropped:
        raise ModelError(
            f"CASTREAM_PROVIDERS asked for {dropped} but the session loaded only {in_use}; check the CUDA/cuDNN "
            "libraries in the logs above, or set CASTREAM_PROVIDERS=auto to fall back to CPU"
        )
