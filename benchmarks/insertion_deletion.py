"""Insertion + deletion throughput (images with both curves done): the batched implementation, as is and with
BatchNorm folded as the evaluation runs it, against the loop scoring one perturbed image per pass; random weights."""

from __future__ import annotations

import copy
import os
import time
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.models import get_model

from benchmarks.sections import Aim, Section, dig, fmt, table
from interpret import metrics
from training import synthetic
from training.backbones import fold_batch_norm
from training.data import Preprocessing


def _inputs(count: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic images (normalised, channels-last) and smooth CAM-like saliency maps (7 x 7 upsampled)."""
    split = synthetic.generate(synthetic.SyntheticSpec(size=size, count=count, seed=seed))
    images = Preprocessing(resize=size, crop=size).normalize(torch.from_numpy(split.images))  # ImageNet statistics
    coarse = torch.rand(count, 1, 7, 7, generator=torch.Generator().manual_seed(seed))
    return images, F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


@torch.no_grad()
def _score(model: torch.nn.Module, batch: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    return model(batch).softmax(1).gather(1, classes[:, None])[:, 0]


def run(backbone: str = "resnet50", size: int = 224, images: int = 4, naive_images: int = 2, batch_size: int = 32,
        pixels_per_step: int = 0, seed: int = 0, tolerance: float = 1e-4) -> dict[str, Any]:  # fmt: skip
    """The loop on ``naive_images``, both batched variants on ``images``; ``pixels_per_step`` 0: the default."""
    if images < 1 or naive_images < 1 or naive_images > images:
        raise ValueError(f"need 1 <= naive_images <= images, got naive_images={naive_images}, images={images}")
    torch.manual_seed(seed)
    model = get_model(backbone, weights=None).eval().requires_grad_(False).to(memory_format=torch.channels_last)
    folded = copy.deepcopy(model)
    fold_batch_norm(folded)  # in place
    x, saliency = _inputs(images, size, seed)
    classes = model(x[:1]).argmax(1).repeat(images)  # the same class throughout keeps probabilities comparable
    pace = pixels_per_step or metrics.default_pixels_per_step(size, size)
    for net in (model, folded):  # warm-up: both paths' primitives are created before timing
        _score(net, x[:1], classes[:1])
        _score(net, x[:1].expand(batch_size, -1, -1, -1), classes[:1].expand(batch_size))
    started = time.perf_counter()
    reference = [metrics.reference_insertion_deletion(partial(_score, model), x[i], classes[i], saliency[i], pace)
                 for i in range(naive_images)]  # fmt: skip
    naive_rate, rates, difference = naive_images / (time.perf_counter() - started), [], 0.0
    expected = torch.stack([torch.stack(pair) for pair in reference])  # (image, insertion or deletion, step)
    for net in (model, folded):
        started = time.perf_counter()
        curves = metrics.insertion_deletion(partial(_score, net), x, classes, saliency, pace, batch_size=batch_size)
        rates.append(images / (time.perf_counter() - started))
        difference = max(difference, (torch.stack(curves, 1)[:naive_images] - expected).abs().max().item())
    return {"backbone": backbone, "size": size, "steps": -(-size * size // pace), "pixels_per_step": pace,
            "batch_size": batch_size, "threads": torch.get_num_threads(), "images": images,
            "naive_images": naive_images, "naive_images_per_second": naive_rate,  # one image, one step, one pass a time
            "batched_images_per_second": rates[0], "folded_images_per_second": rates[1],  # BatchNorm folded or not
            "batching_speedup": rates[0] / naive_rate, "speedup": rates[1] / naive_rate,
            "max_abs_difference": difference, "equal": difference <= tolerance,
            "load_average": os.getloadavg()[0]}  # fmt: skip


def _render(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    rows = [["one image, one step per forward pass", fmt(r["naive_images_per_second"], 3), "1.00x"],
            ["batched", fmt(r["batched_images_per_second"], 3), f"{r['batching_speedup']:.2f}x"],
            ["batched, BatchNorm folded", fmt(r["folded_images_per_second"], 3),
             f"**{r['speedup']:.2f}x**"]]  # fmt: skip
    return [
        f"{r['backbone']} at {r['size']} px, {r['steps']} steps of {r['pixels_per_step']} pixels, "
        f"{r['threads']} threads; batched: {r['images']} images, {r['batch_size']} perturbed images per pass; loop: "
        f"{r['naive_images']} image(s).",
        "",
        *table(["", "images/s", "speed-up"], rows),
        "",
        f"Curves equal: {'yes' if r['equal'] else '**no**'} (largest difference {r['max_abs_difference']:.1e}).",
        "",
    ]


SECTIONS = (Section("insertion_deletion", "Insertion and deletion: batched against one step at a time", run,
                    {"backbone": "resnet18", "size": 32, "images": 2, "naive_images": 2, "batch_size": 8}, _render,
                    lambda r: [Aim("insertion + deletion, batched / one step at a time", dig(r, "speedup"), 5.0, True,
                                   "x")]),)  # fmt: skip
