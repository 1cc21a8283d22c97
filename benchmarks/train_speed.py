"""Stream training throughput against the frozen model's forward-only throughput, on one random batch in alternating
rounds, with the training code's own pieces and the precision it resolves to on this CPU."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks.harness import interleaved, summarise
from benchmarks.sections import Aim, Section, dig, fmt, table
from training.engine import Objective, StageSettings, TrainingContext, make_optimizer, trainable_parameters
from training.model import CAStreamNet, ModelConfig
from training.precision import describe

AIM = 0.8  # training images/s over forward images/s, at least
ROWS = {"forward": "frozen model, forward only (`no_grad`)", "train": "stream training step (forward, backward, SGD)"}


def steps(model: CAStreamNet, runtime: TrainingContext, images: Tensor, labels: Tensor) -> tuple[Callable, Callable]:
    """``(forward, train_step)`` on one batch, set up as ``training.engine.train_stage`` sets up the stream stage."""
    optimizer = make_optimizer(trainable_parameters(model, "stream"), StageSettings(epochs=1, lr=0.01))
    objective = Objective(model, "stream", runtime)

    def forward() -> None:  # the frozen model with its GAP head: what the baseline costs to run
        with torch.no_grad(), runtime.autocast():
            model(images, pooling="gap")

    def train_step() -> None:  # the body of train_stage's loop: forward, cross-entropy, backward, optimiser step
        loss = nn.functional.cross_entropy(objective(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return forward, train_step


def run(backbone: str = "resnet50", image_size: int = 224, batch_size: int = 16, budget_s: float = 45.0,
        precision: str = "auto", num_classes: int = 1000) -> dict[str, Any]:  # fmt: skip
    if budget_s < 0 or batch_size < 1:
        raise ValueError(f"need budget_s >= 0 and batch_size >= 1, got {budget_s!r} and {batch_size!r}")
    torch.manual_seed(0)
    model = CAStreamNet(ModelConfig(backbone, num_classes))
    images, labels = torch.randn(batch_size, 3, image_size, image_size), torch.randint(0, num_classes, (batch_size,))
    context = TrainingContext(device=torch.device("cpu"), precision=precision, progress=False)
    forward, train_step = steps(model, context, images, labels)
    forward(), train_step()  # first calls allocate and pick kernels
    seconds = interleaved({"forward": forward, "train": train_step}, budget_s)
    return {"backbone": backbone, "image_size": image_size, "batch_size": batch_size, "rounds": len(seconds["forward"]),
            "threads": torch.get_num_threads(), "precision": describe(context.dtype),  # as resolved: fp32, bf16, fp16
            **{step: summarise(values, batch_size) for step, values in seconds.items()},  # per batch and images/s
            "ratio": float(np.median(seconds["forward"] / seconds["train"])), "aim": AIM}  # fmt: skip


def _render(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    rows = [[label, fmt(r[step]["p50_ms"]), fmt(r[step]["images_per_second"], 2)] for step, label in ROWS.items()]
    policy = "float32" if r["precision"] == "fp32" else r["precision"] + " autocast"
    return [
        f"{r['backbone']} at {r['image_size']} px, batch {r['batch_size']}, {r['threads']} threads, {policy} (the "
        f"training default here), {r['rounds']} alternating rounds.",
        "",
        *table(["", "ms per batch", "images/s"], rows),
        "",
        f"Training throughput / forward throughput: **{r['ratio']:.2f}** (aim >= {r['aim']}).",
        "",
    ]


SECTIONS = (Section("train_speed", "Stream training against the frozen forward pass", run, render=_render,
                    aims=lambda r: [Aim("stream training / frozen forward throughput", dig(r, "ratio"), AIM, True)],
                    quick={"backbone": "resnet18", "image_size": 64, "batch_size": 4, "budget_s": 0.5}),)  # fmt: skip
