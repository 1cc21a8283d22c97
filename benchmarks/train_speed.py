"""Stream training throughput against the frozen model's forward-only throughput, on the same batches.

The stream stage of ``training.fit`` runs the frozen backbone under ``no_grad`` and back-propagates through
the CA stream alone (~0.25 % of ResNet-50's multiply-adds), so a training step should cost little more than
the forward pass the frozen model needs anyway. Both are timed round by round in alternating order, with
the training code's own pieces (``Objective``, ``trainable_parameters``, ``make_optimizer``, its autocast):
- forward: the frozen model with its GAP head under ``no_grad`` (what the baseline costs to run);
- training step: the stream stage's forward, cross-entropy, backward and optimiser step.
The headline is training images/s over forward images/s (aim >= 0.8). Weights are random: the cost of a
step does not depend on them.

python -m benchmarks train_speed                  # ResNet-50 at 224 px, batch 16, ~45 s of timing
python -m benchmarks train_speed --backbone resnet18 --image-size 112 --budget-s 10
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.harness import interleaved
from benchmarks.sections import Aim, Section, dig, fmt, table
from training.engine import Objective, StageSettings, TrainingContext, make_optimizer, trainable_parameters
from training.model import CAStreamNet, ModelConfig
from training.precision import describe

log = logging.getLogger(__name__)

AIM = 0.8


def steps(
    model: CAStreamNet, runtime: TrainingContext, images: torch.Tensor, labels: torch.Tensor
) -> tuple[Callable[[], None], Callable[[], None]]:
    """``(forward, train_step)`` on one batch, set up as ``training.engine.train_stage`` sets up the stream stage."""
    optimizer = make_optimizer(trainable_parameters(model, "stream"), StageSettings(epochs=1, lr=0.01))
    objective = Objective(model, "stream", runtime)

    def forward() -> None:
        with torch.no_grad(), runtime.autocast():
            model(images, pooling="gap")

    def train_step() -> None:  # the body of train_stage's loop
        loss = nn.functional.cross_entropy(objective(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return forward, train_step


def run(
    backbone: str = "resnet50",
    image_size: int = 224,
    batch_size: int = 16,
    budget_s: float = 30.0,
    precision: str = "auto",
    num_classes: int = 1000,
    min_rounds: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Times both on one random batch, in ``precision`` as the training command resolves it on this CPU."""
    if budget_s < 0 or batch_size < 1:
        raise ValueError(f"need budget_s >= 0 and batch_size >= 1, got {budget_s!r} and {batch_size!r}")
    torch.manual_seed(seed)
    model = CAStreamNet(ModelConfig(backbone, num_classes))
    images = torch.randn(batch_size, 3, image_size, image_size)
    labels = torch.randint(0, num_classes, (batch_size,))
    context = TrainingContext(device=torch.device("cpu"), precision=precision, progress=False)
    forward, train_step = steps(model, context, images, labels)
    forward(), train_step()  # first calls allocate and pick kernels
    seconds = interleaved({"forward": forward, "train": train_step}, budget_s, min_rounds)
    forward_s, train_s = float(np.median(seconds["forward"])), float(np.median(seconds["train"]))
    return {
        "backbone": backbone, "image_size": image_size, "batch_size": batch_size, "threads": torch.get_num_threads(),
        "precision": describe(context.dtype),  # what the policy resolved to here: fp32, bf16 or fp16
        "rounds": len(seconds["forward"]),
        "forward_ms": forward_s * 1000, "train_step_ms": train_s * 1000,  # medians per batch
        "forward_images_per_second": batch_size / forward_s, "train_images_per_second": batch_size / train_s,
        "ratio": float(np.median(seconds["forward"] / seconds["train"])),  # training over forward throughput
        "aim": AIM,
    }  # fmt: skip


def _render(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    policy = r["precision"]
    rows = [
        ["frozen model, forward only (`no_grad`)", fmt(r["forward_ms"]), fmt(r["forward_images_per_second"], 2)],
        [
            "stream training step (forward, backward, SGD)",
            fmt(r["train_step_ms"]),
            fmt(r["train_images_per_second"], 2),
        ],
    ]
    return [
        f"{r['backbone']} at {r['image_size']} px, batch {r['batch_size']}, {r['threads']} threads, "
        f"{'float32' if policy == 'fp32' else policy + ' autocast'} (the training default here), {r['rounds']} "
        "alternating rounds.",
        "",
        *table(["", "ms per batch", "images/s"], rows),
        "",
        f"Training throughput / forward throughput: **{r['ratio']:.2f}** (aim >= {r['aim']}).",
        "",
    ]


SECTIONS = (
    Section(
        "train_speed",
        "Stream training against the frozen forward pass",
        full={"backbone": "resnet50", "image_size": 224, "batch_size": 16, "budget_s": 45.0},
        quick={"backbone": "resnet18", "image_size": 64, "batch_size": 4, "budget_s": 0.5},
        run=lambda context: run(**context.budget),
        render=_render,
        aims=lambda result: [Aim("stream training / frozen forward throughput", dig(result, "ratio"), AIM, True)],
        reads=(),
    ),
)
