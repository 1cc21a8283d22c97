"""Which floating-point precision to compute in, chosen by what the hardware does natively.

bf16 autocast pays off only where the hardware has bf16 arithmetic: on a CPU with AMX or AVX512-BF16 it
is faster than float32, but elsewhere PyTorch emulates it and a training step ran 15x slower than in
float32 (ResNet-18 at 112 px, AMD EPYC with AVX2 only). So ``auto`` means bf16 on such CPUs, float32 on
other CPUs, and bf16 (or fp16 where bf16 is missing) on CUDA GPUs.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
from pathlib import Path

import torch

log = logging.getLogger(__name__)

POLICIES = ("auto", "bf16", "fp32")
NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})  # as /proc/cpuinfo names them


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags as Linux reports them; empty where they cannot be read (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


# The instruction sets that decide how fast, and with which rounding, the CPU trains and serves.
NAMED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name as Linux reports it (else what :mod:`platform` knows), with its notable flags."""
    name = ""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
                break
    except OSError:
        pass
    flags = cpu_flags(cpuinfo)
    named = [flag for flag in NAMED_FLAGS if flag in flags]
    name = name or platform.processor() or platform.machine()
    return f"{name} ({', '.join(named)})" if named else name


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True where the CPU computes in bf16 natively (AMX or AVX512-BF16)."""
    return bool(NATIVE_BF16_FLAGS & cpu_flags())


def check_precision(precision: str) -> str:
    if precision not in POLICIES:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(POLICIES)}")
    return precision


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``, or None for plain float32.

    ``auto`` picks bf16 only where it is native; an explicit ``bf16`` on a CPU without it is honoured
    with a warning (it is correct, only slow).
    """
    check_precision(precision)
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if precision == "auto" else _unsupported_cuda_bf16()
    if device.type != "cpu":
        return None
    if cpu_has_native_bf16():
        return torch.bfloat16
    if precision == "bf16":
        _warn_emulated_bf16()
        return torch.bfloat16
    return None


@functools.cache
def _warn_emulated_bf16() -> None:
    # Once per process: the dtype is resolved on every training step.
    log.warning("this CPU has no native bf16 (no AMX or AVX512-BF16): bf16 autocast is emulated and slow")


def _unsupported_cuda_bf16() -> torch.dtype:
    raise ValueError("precision 'bf16' was asked for but this GPU has no bf16; use --precision auto (fp16) or fp32")


def describe(dtype: torch.dtype | None) -> str:
    """A short name of an autocast dtype, as recorded in a run's configuration."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device``; a no-op for float32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
