"""The frozen backbone's feature maps of a split, computed once and reused by every stream epoch.

While the stream trains, the backbone is frozen and (for the synthetic data) its inputs never change, so
the taps of an image are the same every epoch. Computing them once turns each later epoch's cost from a
backbone forward pass into the stream's own, which is about 0.25 % of it. Used only where the taps fit in
a share of the memory available.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from training.data import Batches
from training.model import CAStreamNet
from training.precision import autocast

log = logging.getLogger(__name__)

MEMORY_SHARE = 0.4  # of the memory available when the cache is built


class CachedTaps:
    """A split seen as (taps, labels) batches: ``taps`` is a list of tensors (N, C_i, H_i, W_i)."""

    deterministic = True

    def __init__(self, taps: list[Tensor], labels: Tensor) -> None:
        if any(len(t) != len(labels) for t in taps):
            raise ValueError(f"taps hold {[len(t) for t in taps]} images for {len(labels)} labels")
        self.taps, self.labels = taps, labels

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.taps)

    def load(self, order: Iterable[Tensor]) -> Iterator[tuple[list[Tensor], Tensor]]:
        for index in order:
            yield [t[index] for t in self.taps], self.labels[index]


def available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@torch.no_grad()
def tap_bytes_per_image(model: CAStreamNet, image: Tensor, dtype: torch.dtype | None) -> int:
    with autocast(image.device, dtype):
        taps = model.forward_features(image[:1])
    return sum(t.numel() * t.element_size() for t in taps)


@torch.no_grad()
def cache_taps(
    model: CAStreamNet,
    batches: Batches,
    device: torch.device,
    dtype: torch.dtype | None,
    budget_bytes: int | None = None,
) -> Batches | None:
    """``batches`` over the frozen backbone's cached taps, or None where the split is random or too big.

    The returned batches shuffle, shard and pad exactly as ``batches`` does, so a run gives the same
    batches whether or not its taps are cached.
    """
    source = batches.source
    if not getattr(source, "deterministic", False) or not hasattr(source, "in_order"):
        return None
    model.eval()
    first = next(source.in_order(1)).to(device)
    needed = tap_bytes_per_image(model, first, dtype) * len(source)
    if budget_bytes is None:
        available = available_memory()
        budget_bytes = int(MEMORY_SHARE * available) if available else 0
    if needed > budget_bytes:
        log.info("not caching taps: %.2f GB needed, %.2f GB allowed", needed / 1e9, budget_bytes / 1e9)
        return None
    chunks: list[list[Tensor]] = []
    for images in source.in_order(max(batches.batch_size, 64)):
        with autocast(device, dtype):
            chunks.append([t.cpu() for t in model.forward_features(images.to(device))])
    taps = [torch.cat(parts) for parts in zip(*chunks, strict=True)]
    cached = CachedTaps(taps, source.labels)
    log.info("cached the frozen backbone's taps of %d images (%.2f GB)", len(cached), cached.nbytes / 1e9)
    return batches.over(cached)
