"""Real images of a checkpoint's data set, preprocessed exactly as the deployed model expects them.

Verification and int8 agreement use the validation split; int8 calibration uses training images (with
the inference transform, not the training augmentation, since that is what the model will see).
"""

from __future__ import annotations

import base64
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.checkpoint import Checkpoint
from training.images import SPLITS, load_images, seeded_subset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Samples:
    """Normalised images (N, 3, S, S) float32, C-contiguous, and their labels (N,) int64: ONNX Runtime's inputs."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def load_samples(state: Checkpoint, split: str, count: int, cache_dir: Path | None = None) -> Samples:
    """Up to ``count`` images of ``split`` of the checkpoint's data set.

    Validation images are taken in order; training images are a seeded random subset, so that a
    calibration set covers every class.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if count < 1:
        raise ValueError(f"need at least one image, got count={count!r}")
    seed = state.data.seed

    def choose(size: int) -> torch.Tensor:
        if size == 0:
            raise ValueError(f"the {split} split is empty; export needs real images to verify the model")
        return torch.arange(min(count, size)) if split == "val" else seeded_subset(size, count, seed)

    chosen = load_images(state, split, choose, cache_dir)
    log.debug("%d %s images of %s data", len(chosen), split, state.data.kind)
    return Samples(np.ascontiguousarray(chosen.images.float().numpy()), chosen.labels.numpy().astype(np.int64))


def gallery(state: Checkpoint, limit: int, cache_dir: Path | None = None) -> list[dict[str, str]]:
    """Up to ``limit`` validation images, one per class in class order, as ``{"label", "png"}`` (base64 PNG).

    The service offers them on its page, so that people trying the model see what it knows. The images are
    the crops the model sees, picked from a seeded random subset of the split, the same on every export.
    """
    if limit < 1:
        return []
    wanted = min(limit, len(state.classes))

    def choose(size: int) -> torch.Tensor:
        if size == 0:
            raise ValueError("the validation split is empty; export needs real images to verify the model")
        return seeded_subset(size, min(size, 50 * wanted), state.data.seed).sort().values

    chosen = load_images(state, "val", choose, cache_dir)
    first: dict[int, int] = {}
    for row, label in enumerate(chosen.labels.tolist()):
        first.setdefault(label, row)
    samples = []
    for label in sorted(first)[:wanted]:
        buffer = io.BytesIO()
        Image.fromarray(chosen.pixels[first[label]]).save(buffer, format="PNG", optimize=True)
        samples.append({"label": state.classes[label], "png": base64.b64encode(buffer.getvalue()).decode()})
    log.debug("%d sample images for the service's page", len(samples))
    return samples
