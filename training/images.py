"""Labelled images of a checkpoint's data set, preprocessed as the checkpoint's model expects them.

Export verifies and calibrates on them, the interpretability evaluation explains them: both read the
data set recorded in the checkpoint, rebuilt here from the checkpoint alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision import datasets

from training.checkpoint import Checkpoint
from training.data import Preprocessing, SyntheticSource

SPLITS = ("train", "val")
# The synthetic data's third split, for choosing recipes and settings on images that no report shows.
SELECTION = "selection"


@dataclass
class LabelledImages:
    """Normalised images (N, 3, H, W), labels (N,), the same images as uint8 pixels (N, H, W, 3), and the
    object masks (N, H, W) where the data set has them (synthetic data)."""

    images: Tensor
    labels: Tensor
    pixels: np.ndarray
    masks: Tensor | None
    classes: tuple[str, ...]
    preprocessing: Preprocessing

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.preprocessing.mean)

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.preprocessing.std)

    def __len__(self) -> int:
        return len(self.labels)


def load_images(
    state: Checkpoint, split: str, choose: Callable[[int], Tensor], cache_dir: Path | None = None
) -> LabelledImages:
    """The images ``choose(size)`` picks, by index, out of ``split`` of the checkpoint's data set.

    ``choose`` receives the size of the split and returns the indices to read, in the order wanted.
    """
    config, preprocessing, classes = state.data, state.preprocessing, state.classes
    if split == SELECTION and config.kind != "synthetic":
        raise ValueError(
            f"the {SELECTION} split exists only for the synthetic data; for your own data, hold out a folder of "
            "images and point a checkpoint's data at it"
        )
    if split not in (*SPLITS, SELECTION):
        raise ValueError(f"unknown split {split!r}; expected one of {(*SPLITS, SELECTION)}")
    if config.kind == "synthetic":
        source = SyntheticSource(config.synthetic_spec(split), preprocessing, cache_dir)
        index = choose(len(source))
        pixels = source.images[index]
        masks = torch.from_numpy(np.asarray(source.masks)[index.numpy()])
        images = preprocessing.normalize(pixels)
        return LabelledImages(images, source.labels[index], pixels.numpy(), masks, classes, preprocessing)
    if config.kind != "imagefolder":
        raise ValueError(f"unknown data kind {config.kind!r} in the checkpoint; expected 'synthetic' or 'imagefolder'")
    folder = Path(config.root or "") / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} is not a directory; the checkpoint was trained on the ImageFolder at {config.root!r}, "
            "which is read again for real images: mount it at the same path"
        )
    dataset = datasets.ImageFolder(str(folder), transform=preprocessing.eval_transform())
    index = choose(len(dataset))
    pairs = [dataset[i] for i in index.tolist()]
    images = torch.stack([image for image, _ in pairs])
    labels = torch.tensor([label for _, label in pairs])
    mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)
    pixels = (images * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return LabelledImages(images, labels, pixels, None, classes, preprocessing)


def seeded_subset(size: int, count: int, seed: int) -> Tensor:
    """``count`` indices out of ``size`` drawn without replacement from a generator seeded with ``seed``."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:count]
