"""The device a command runs on, from its ``--device`` argument."""

from __future__ import annotations

import torch


def resolve_device(request: str) -> torch.device:
    """``auto``: CUDA where it is available, the CPU otherwise; any other request names the device itself."""
    if request == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(request)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {request!r} was asked for but CUDA is not available; use --device cpu")
    return device
