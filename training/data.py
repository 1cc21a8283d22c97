"""Training and validation data: an ImageFolder directory, or the embedded synthetic default.

Both yield batches of normalised float images (N, 3, S, S) and integer labels, sharded across DDP ranks.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from service import contract
from training import synthetic
from training.files import atomic_write

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SELECTION_SEED = 1_000_000  # far above the seeds of train and val splits (2 * seed, 2 * seed + 1)
DEFAULT_CACHE = Path(".cache/castream")  # generated synthetic splits, relative to the working directory


@dataclass(frozen=True)
class Preprocessing(contract.Preprocessing):
    """The model-file contract's preprocessing record (ImageNet statistics by default), with its torchvision
    transforms: resize the shorter side, centre-crop, scale to [0, 1], normalise."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def eval_transform(self) -> transforms.Compose:
        mode = transforms.InterpolationMode(self.interpolation)
        return transforms.Compose(
            [
                transforms.Resize(self.resize, interpolation=mode, antialias=True),
                transforms.CenterCrop(self.crop),
                transforms.ToTensor(),
                transforms.Normalize(self.mean, self.std),
            ]
        )

    def train_transform(self) -> transforms.Compose:
        mode = transforms.InterpolationMode(self.interpolation)
        return transforms.Compose(
            [
                transforms.RandomResizedCrop(self.crop, interpolation=mode, antialias=True),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(self.mean, self.std),
            ]
        )

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 NHWC images already at the crop size -> normalised float NCHW."""
        x = images.permute(0, 3, 1, 2).float().div_(255)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)


def preprocessing_for(weights_transforms: Any | None, image_size: int, default: Preprocessing) -> Preprocessing:
    """The backbone's own preprocessing (from torchvision weights), scaled to ``image_size``; ``default`` without."""
    if weights_transforms is None:
        return default
    crop = weights_transforms.crop_size[0]
    resize = weights_transforms.resize_size[0]
    return Preprocessing(
        resize=round(image_size * resize / crop),
        crop=image_size,
        mean=tuple(weights_transforms.mean),
        std=tuple(weights_transforms.std),
        interpolation=weights_transforms.interpolation.value,
    )


class Source(Protocol):
    """One split's items: ``load`` gives the (inputs, labels) of each batch of indices it is handed, in order."""

    deterministic: bool  # whether an item is the same tensor every epoch (no augmentation)

    def __len__(self) -> int: ...

    def load(self, order: Iterable[Tensor]) -> Iterator[tuple[Any, Tensor]]: ...


class Batches:
    """(inputs, labels) batches over one split, this rank's shard of it; ``set_epoch`` reshuffles deterministically.

    The order is :class:`torch.utils.data.DistributedSampler`'s: a permutation seeded by ``seed + epoch``, padded by
    wrapping so that every rank sees as many batches, then every ``world``-th index from ``rank``.
    """

    def __init__(self, source: Source, batch_size: int, shuffle: bool, seed: int, rank: int = 0, world: int = 1):
        self.source, self.batch_size, self.shuffle, self.seed = source, batch_size, shuffle, seed
        self.rank, self.world, self.epoch = rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self._shard_size() / self.batch_size)

    def _shard_size(self) -> int:
        return math.ceil(len(self.source) / self.world)

    def order(self) -> Iterator[Tensor]:
        """The indices of each of this rank's batches in this epoch."""
        size = len(self.source)
        order = torch.arange(size)
        if self.shuffle:
            order = torch.randperm(size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        shard = self._shard_size()
        order = torch.cat([order, order[: shard * self.world - len(order)]])[self.rank :: self.world]
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size]

    def over(self, source: Source) -> Batches:
        """The same batching (size, shuffle, shard, epoch) over another source of the same items."""
        batches = Batches(source, self.batch_size, self.shuffle, self.seed, self.rank, self.world)
        batches.set_epoch(self.epoch)
        return batches

    def __iter__(self) -> Iterator[tuple[Any, Tensor]]:
        return self.source.load(self.order())


class SyntheticSource:
    """In-memory synthetic split; images are generated once (or read from the on-disk cache)."""

    deterministic = True  # no augmentation: an image gives the same tensor every epoch

    def __init__(self, spec: synthetic.SyntheticSpec, preprocessing: Preprocessing, cache_dir: Path | None):
        split = load_synthetic(spec, cache_dir)
        self.images = torch.from_numpy(split.images)
        self.labels = torch.from_numpy(split.labels)
        self.masks = split.masks
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, order: Iterable[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        for index in order:
            yield self.preprocessing.normalize(self.images[index]), self.labels[index]

    def in_order(self, batch_size: int) -> Iterator[Tensor]:
        """Every normalised image once, in index order."""
        for start in range(0, len(self), batch_size):
            yield self.preprocessing.normalize(self.images[start : start + batch_size])


class FolderSource:
    """An ImageFolder split read with torchvision transforms through a DataLoader."""

    deterministic = False  # training transforms are random; files are read anew each epoch

    def __init__(self, dataset: datasets.ImageFolder | Subset, workers: int):
        self.dataset, self.workers = dataset, workers

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, order: Iterable[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        batches = [index.tolist() for index in order]
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.workers, persistent_workers=False)
        for images, labels in loader:
            yield images.contiguous(memory_format=torch.channels_last), labels


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from; stored in checkpoints so that later stages can reload it."""

    kind: str = "synthetic"  # "synthetic" or "imagefolder"
    root: str | None = None
    image_size: int = 112
    train_count: int = 4000
    val_count: int = 1000
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self, classes: tuple[str, ...]) -> str:
        """What a model trained on this data knows, in a sentence for the people who try it."""
        names = ", ".join(classes[:12]) + (f" and {len(classes) - 12} more" if len(classes) > 12 else "")
        if self.kind == "synthetic":
            return (
                f"castream's synthetic shapes: {len(classes)} classes ({names}), one shape per image on textured "
                f"clutter, {self.train_count:,} training images of {self.image_size} px generated from seed {self.seed}"
            )
        subset = f", {self.train_count:,} training images" if self.train_count else ""
        folder = Path(self.root or "").name or self.root
        return f"the ImageFolder data set {folder!r}: {len(classes)} classes ({names}){subset}"

    def synthetic_spec(self, split: str, count: int | None = None) -> synthetic.SyntheticSpec:
        """The synthetic ``split``: ``train``, ``val`` (what runs report) or ``selection``.

        The selection split is for choosing recipes, so that no choice is tuned on the reported images.
        Seeds differ per split: no two splits share an image.
        """
        seeds = {"train": self.seed * 2, "val": self.seed * 2 + 1, "selection": SELECTION_SEED + self.seed}
        if split not in seeds:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(seeds)}")
        if count is None:
            count = self.train_count if split == "train" else self.val_count
        return synthetic.SyntheticSpec(size=self.image_size, count=count, seed=seeds[split])


@dataclass
class Data:
    """The two splits, their class names, and the preprocessing that the deployed model will use."""

    train: Source
    val: Source
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    config: DataConfig


def load_synthetic(spec: synthetic.SyntheticSpec, cache_dir: Path | None) -> synthetic.SyntheticSplit:
    """Generates a split, or reads it from ``cache_dir`` where an earlier run wrote it."""
    if cache_dir is None:
        return synthetic.generate(spec)
    key = hashlib.sha256(spec.to_json().encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"synthetic-{key}.npz"
    if path.exists():
        with np.load(path) as stored:
            return synthetic.SyntheticSplit(stored["images"], stored["labels"], stored["masks"])
    log.info("generating %d synthetic images of %d px (seed %d)", spec.count, spec.size, spec.seed)
    split = synthetic.generate(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Each DDP rank writes a temporary file of its own, then renames it: readers never see half a file.
    with atomic_write(path) as file:
        np.savez(file, images=split.images, labels=split.labels, masks=split.masks)
    return split


def load_data(
    config: DataConfig, preprocessing: Preprocessing, cache_dir: Path | None = DEFAULT_CACHE, workers: int = 2
) -> Data:
    """Builds both splits. For an ImageFolder, ``preprocessing`` is the backbone's own."""
    if config.kind == "synthetic":
        preprocessing = replace(preprocessing, resize=config.image_size, crop=config.image_size)
        train = SyntheticSource(config.synthetic_spec("train"), preprocessing, cache_dir)
        val = SyntheticSource(config.synthetic_spec("val"), preprocessing, cache_dir)
        return Data(train, val, synthetic.CLASSES, preprocessing, config)
    if config.kind != "imagefolder":
        raise ValueError(f"unknown data kind {config.kind!r}; expected 'synthetic' or 'imagefolder'")
    root = Path(config.root or "")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise FileNotFoundError(
                f"{root / split} is not a directory; --data expects a folder with train/ and val/ subfolders, "
                "each holding one folder of images per class (torchvision ImageFolder layout)"
            )
    train_set = datasets.ImageFolder(str(root / "train"), transform=preprocessing.train_transform())
    val_set = datasets.ImageFolder(str(root / "val"), transform=preprocessing.eval_transform())
    if train_set.classes != val_set.classes:
        raise ValueError(f"train/ and val/ have different classes: {train_set.classes} vs {val_set.classes}")
    classes = tuple(val_set.classes)
    train = FolderSource(_limit(train_set, config.train_count, config.seed), workers)
    val = FolderSource(_limit(val_set, config.val_count, config.seed), workers)
    return Data(train, val, classes, preprocessing, config)


def _limit(dataset: datasets.ImageFolder, count: int | None, seed: int) -> datasets.ImageFolder | Subset:
    if not count or count >= len(dataset):
        return dataset
    index = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count]
    return Subset(dataset, index.tolist())
