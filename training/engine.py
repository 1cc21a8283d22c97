"""The training loop: a baseline stage (the classifier, or the whole network), then the CA stream.

During the stream stage the backbone and classifier are frozen for real: in eval mode (BatchNorm
statistics never move), ``requires_grad`` off, and their forward pass under ``no_grad``. Only the
stream's parameters are handed to the optimiser.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from training import checkpoint, precision
from training.data import Batches
from training.devices import resolve_device
from training.model import CAStreamNet
from training.tapcache import cache_taps

log = logging.getLogger(__name__)

STAGES = ("probe", "full", "stream")  # probe: classifier only; full: backbone + classifier end to end
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)


@dataclass(frozen=True)
class StageSettings:
    epochs: int
    lr: float
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0
    # Progressive resizing: the first ``small_epochs`` epochs see the images downscaled to ``small_size`` px,
    # a fraction of the cost; the later ones the full size, so BatchNorm and the features settle there.
    small_size: int | None = None
    small_epochs: int = 0

    def image_size(self, epoch: int) -> int | None:
        """The size images are downscaled to in ``epoch`` (0-based), or None for their own size."""
        return self.small_size if self.small_size and epoch < self.small_epochs else None


@dataclass(frozen=True)
class TrainingContext:
    """Where and how the loop runs: device, precision and the DDP group (rank 0 writes files).

    ``precision`` is a policy (see :mod:`training.precision`); ``dtype`` is what it resolved to on this device,
    once, when the context is made.
    """

    device: torch.device
    precision: str = "auto"
    rank: int = 0
    world: int = 1
    progress: bool = True
    dtype: torch.dtype | None = field(init=False)

    def __post_init__(self) -> None:
        dtype = precision.autocast_dtype(precision.check_precision(self.precision), self.device)
        object.__setattr__(self, "dtype", dtype)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        return precision.autocast(self.device, self.dtype)


class Objective(nn.Module):
    """The trainable part of each stage as one module, so that DDP wraps exactly what learns."""

    def __init__(self, model: CAStreamNet, stage: str, runtime: TrainingContext) -> None:
        super().__init__()
        self.model, self.stage, self.runtime = model, stage, runtime

    def forward(self, inputs: Tensor | list[Tensor]) -> Tensor:
        """Logits for images (N, 3, H, W), or for the frozen backbone's taps of them (cached)."""
        if self.stage == "full":
            with self.runtime.autocast():
                return self.model(inputs, pooling="gap").logits
        return self.model.forward_head(frozen_taps(self.model, inputs, self.runtime), self.pooling).logits

    @property
    def pooling(self) -> str:
        return "ca" if self.stage == "stream" else "gap"


def frozen_taps(model: CAStreamNet, inputs: Tensor | list[Tensor], runtime: TrainingContext) -> list[Tensor]:
    """The backbone's taps of images, computed without gradients; cached taps pass through."""
    if isinstance(inputs, list):
        return inputs
    with torch.no_grad(), runtime.autocast():
        return model.forward_features(inputs)


def trainable_parameters(model: CAStreamNet, stage: str) -> list[nn.Parameter]:
    """Sets ``requires_grad`` and module modes for ``stage``; returns the parameters that learn."""
    model.requires_grad_(False)
    model.eval()
    if stage == "stream":
        learn: nn.Module = model.stream
    elif stage == "probe":
        learn = model.backbone.classifier
    elif stage == "full":
        learn = model.backbone
    else:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    learn.requires_grad_(True)
    learn.train()
    return list(learn.parameters())


def make_optimizer(params: list[nn.Parameter], settings: StageSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    raise ValueError(f"unknown optimizer {settings.optimizer!r}; expected 'sgd' or 'adamw'")


def make_schedule(
    optimizer: torch.optim.Optimizer, settings: StageSettings, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to zero, stepped every iteration."""
    total = max(1, settings.epochs * steps_per_epoch)
    warmup = int(settings.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def top1(
    model: CAStreamNet, batches: Batches, runtime: TrainingContext, poolings: tuple[str, ...], size: int | None = None
) -> dict[str, float]:
    """Top-1 accuracy in percent for each pooling, over the whole split (summed across ranks).

    ``size``: images downscaled to it first, as a progressively resized epoch saw them.
    """
    model.eval()
    correct = torch.zeros(len(poolings), dtype=torch.float64)
    seen = torch.zeros((), dtype=torch.float64)
    for inputs, labels in _progress(batches, runtime, "validate"):
        inputs = _to(inputs, runtime.device)
        if size is not None and not isinstance(inputs, list):
            inputs = downscale(inputs, size)
        taps = frozen_taps(model, inputs, runtime)
        labels = labels.to(runtime.device)
        for index, pooling in enumerate(poolings):
            logits = model.forward_head(taps, pooling).logits
            correct[index] += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
    if runtime.world > 1:
        dist.all_reduce(correct)
        dist.all_reduce(seen)
    return {
        f"val_top1_{p}": round(100.0 * c.item() / max(1.0, seen.item()), 3)
        for p, c in zip(poolings, correct, strict=True)
    }


def downscale(images: Tensor, size: int) -> Tensor:
    """Images (N, 3, H, W) resized (antialiased) so that the shorter side is ``size``; unchanged if not larger."""
    height, width = images.shape[-2:]
    if min(height, width) <= size:
        return images
    shape = (size, round(width * size / height)) if height <= width else (round(height * size / width), size)
    resized = nn.functional.interpolate(images, size=shape, mode="bilinear", antialias=True, align_corners=False)
    return resized.contiguous(memory_format=torch.channels_last)


def _to(inputs: Tensor | list[Tensor], device: torch.device) -> Tensor | list[Tensor]:
    if isinstance(inputs, list):
        return [t.to(device, non_blocking=True) for t in inputs]
    return inputs.to(device, non_blocking=True)


def _progress(iterable: Any, runtime: TrainingContext, desc: str) -> Iterator:
    # Redrawn often on a terminal; in a log file, a line every half minute is enough.
    interval = 0.5 if sys.stderr.isatty() else 30.0
    return tqdm(
        iterable,
        desc=desc,
        leave=False,
        disable=not (runtime.progress and runtime.main),
        dynamic_ncols=True,
        mininterval=interval,
    )


@dataclass
class StageResult:
    history: list[dict[str, Any]]
    seconds: float


def train_stage(
    model: CAStreamNet,
    stage: str,
    train: Batches,
    val: Batches,
    settings: StageSettings,
    runtime: TrainingContext,
    save: Callable[[dict[str, Any]], None],
    resume: dict[str, Any] | None = None,
    cache: bool = True,
) -> StageResult:
    """Runs ``settings.epochs`` epochs of ``stage`` on ``train``, validating on ``val``, saving after each epoch.

    Args:
        save: called on every rank with the stage's training state after each epoch (rank 0 writes it).
        resume: the state saved by ``save`` for this stage, to continue after its last finished epoch.
        cache: in the stream stage, compute the frozen backbone's taps once where the inputs are fixed.
    """
    params = trainable_parameters(model, stage)
    optimizer = make_optimizer(params, settings)
    schedule = make_schedule(optimizer, settings, len(train))
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        history, start_epoch = list(resume["history"]), resume["epoch"]
        torch.set_rng_state(resume["rng"])
        log.info("%s: resuming after epoch %d of %d", stage, start_epoch, settings.epochs)
    if stage == "stream" and cache:
        # The backbone is frozen from here on: where its inputs never change, its taps never change either.
        train = cache_taps(model, train, runtime.device, runtime.dtype) or train
        val = cache_taps(model, val, runtime.device, runtime.dtype) or val
    objective: nn.Module = Objective(model, stage, runtime)
    if runtime.world > 1:
        objective = DistributedDataParallel(objective, broadcast_buffers=stage == "full")
    poolings = ("gap", "ca") if stage == "stream" else ("gap",)
    started = time.perf_counter()
    for epoch in range(start_epoch, settings.epochs):
        train.set_epoch(epoch)
        trainable_parameters(model, stage)  # evaluation switched modules to eval mode
        epoch_started, total_loss, images_seen = time.perf_counter(), 0.0, 0
        bar = _progress(train, runtime, f"{stage} {epoch + 1}/{settings.epochs}")
        size = settings.image_size(epoch) if stage != "stream" else None
        for inputs, labels in bar:
            inputs, labels = _to(inputs, runtime.device), labels.to(runtime.device)
            if size is not None:
                inputs = downscale(inputs, size)
            loss = nn.functional.cross_entropy(objective(inputs).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(labels)
            images_seen += len(labels)
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{schedule.get_last_lr()[0]:.3g}", refresh=False)
        record = {
            "stage": stage,
            "epoch": epoch + 1,
            "train_loss": round(total_loss / max(1, images_seen), 5),
            "train_images_per_second": round(images_seen * runtime.world / (time.perf_counter() - epoch_started), 1),
            **({"image_size": size} if size is not None else {}),
        }
        # Validating costs a forward pass over the split: every epoch of the (cheap, cached) stream stage, but
        # only the last one of a baseline, where it would add a tenth to the run.
        if stage == "stream" or epoch + 1 == settings.epochs:
            record.update(top1(model, val, runtime, poolings, size))
        history.append(record)
        if runtime.main:
            log.info("%s", " ".join(f"{k}={v}" for k, v in record.items()))
        save(
            {
                "epoch": epoch + 1,
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "history": history,
                "rng": torch.get_rng_state(),
                "settings": asdict(settings),
            }
        )
    model.requires_grad_(False)
    model.eval()
    return StageResult(history, time.perf_counter() - started)


def setup_distributed(device_request: str, policy: str = "auto", progress: bool = True) -> TrainingContext:
    """Joins the process group when started by ``torchrun``; picks the device; autocasts as ``policy`` says."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_request)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if world > 1 else (device.index or 0))
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        # A rank that dies leaves its peers waiting in a collective: time out rather than wait forever.
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return TrainingContext(device, policy, rank, world, progress)


def teardown_distributed() -> None:
    """After a successful run: every rank waits for the others, then leaves the group."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def abandon_distributed(runtime: TrainingContext) -> None:
    """After a failure on this rank: leaves the group without waiting for ranks that may never arrive."""
    if dist.is_initialized():
        log.error("rank %d of %d failed; ending the run", runtime.rank, runtime.world)
        dist.destroy_process_group()


def save_checkpoint(path: Path, runtime: TrainingContext, record: checkpoint.Checkpoint) -> None:
    """Rank 0 writes; every rank waits, so no rank runs ahead of a checkpoint it may resume from."""
    if runtime.main:
        checkpoint.save(record, path)
    if runtime.world > 1:
        dist.barrier()
