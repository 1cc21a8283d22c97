"""Real images of a checkpoint's data set, preprocessed exactly as the deployed model expects them.

Verification and int8 agreement use the validation split; int8 calibration uses training images (with
the inference transform, not the training augmentation, since that is what the model will see).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import datasets

from training.data import DataConfig, Preprocessing, SyntheticSource

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


@dataclass(frozen=True)
class Samples:
    """Normalised images (N, 3, S, S) float32, C-contiguous, and their labels (N,) int64."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def load_samples(state: dict[str, Any], split: str, count: int, cache_dir: Path | None = None) -> Samples:
    """Up to ``count`` images of ``split`` of the checkpoint's data set.

    Validation images are taken in order; training images are a seeded random subset, so that a
    calibration set covers every class.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if count < 1:
        raise ValueError(f"need at least one image, got count={count!r}")
    config = DataConfig(**state["data"])
    preprocessing = Preprocessing.from_dict(state["preprocessing"])
    if config.kind == "synthetic":
        source = SyntheticSource(config.synthetic_spec(split), preprocessing, cache_dir)
        index = _choose(len(source), count, split, config.seed)
        images = preprocessing.normalize(source.images[index])
        labels = source.labels[index]
    elif config.kind == "imagefolder":
        folder = Path(config.root or "") / split
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder} is not a directory; the checkpoint was trained on the ImageFolder at {config.root!r}, "
                "which export reads again for real images: mount it at the same path"
            )
        dataset = datasets.ImageFolder(str(folder), transform=preprocessing.eval_transform())
        index = _choose(len(dataset), count, split, config.seed)
        pairs = [dataset[i] for i in index.tolist()]
        images = torch.stack([image for image, _ in pairs])
        labels = torch.tensor([label for _, label in pairs])
    else:
        raise ValueError(f"unknown data kind {config.kind!r} in the checkpoint; expected 'synthetic' or 'imagefolder'")
    log.debug("%d %s images of %s data", len(labels), split, config.kind)
    return Samples(np.ascontiguousarray(images.float().numpy()), labels.numpy().astype(np.int64))


def _choose(size: int, count: int, split: str, seed: int) -> torch.Tensor:
    if size == 0:
        raise ValueError(f"the {split} split is empty; export needs real images to verify the model")
    if split == "val":
        return torch.arange(min(count, size))
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:count]
