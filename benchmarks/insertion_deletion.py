"""Insertion + deletion throughput: the batched implementation against the one-image, one-step loop.

All compute the same curves for the same model, images and saliency maps (checked here). The loop
scores one perturbed image per forward pass; the batched implementation scores many steps of many
images per pass, first on the same model, then with BatchNorm folded into the convolutions as the
evaluation runs it. Throughput counts images whose insertion and deletion curves are both done.

python benchmarks/insertion_deletion.py                    # ResNet-50 at 224 px: 3 images batched, 1 looped
python -m benchmarks insertion_deletion --images 8 --naive-images 2 --batch-size 64

With the defaults it runs for about half a minute on two idle CPU cores (several minutes on busy ones).
The weights are random (no model hub here): the cost of a forward pass does not depend on them, and the
equality check holds for any weights.

On an idle CPU, oneDNN already keeps both cores busy at one image per pass, so batching gains little
there; it gains where a pass on one image leaves the device idle (GPUs) or where other processes compete
for the cores. The load average is printed with the result for that reason.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from typing import Any

import torch
import torch.nn.functional as F
import torchvision

from benchmarks.sections import Aim, Section, dig, fmt, table
from interpret import metrics
from training import synthetic
from training.backbones import fold_batch_norm
from training.data import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

log = logging.getLogger(__name__)


def _inputs(count: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic images (normalised, channels-last) and smooth CAM-like saliency maps (7 x 7 upsampled)."""
    split = synthetic.generate(synthetic.SyntheticSpec(size=size, count=count, seed=seed))
    preprocessing = Preprocessing(resize=size, crop=size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    images = preprocessing.normalize(torch.from_numpy(split.images))
    coarse = torch.rand(count, 1, 7, 7, generator=torch.Generator().manual_seed(seed))
    saliency = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return images, saliency


def _scorer(model: torch.nn.Module):
    @torch.no_grad()
    def score(batch: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return model(batch).softmax(1).gather(1, classes[:, None])[:, 0]

    return score


def run(
    images: int = 3,
    naive_images: int = 1,
    size: int = 224,
    backbone: str = "resnet50",
    batch_size: int = 32,
    pixels_per_step: int | None = None,
    seed: int = 0,
    tolerance: float = 1e-4,
) -> dict[str, Any]:
    """Times the loop and both batched variants on the same inputs; checks that all agree within ``tolerance``."""
    if images < 1 or naive_images < 1 or naive_images > images:
        raise ValueError(f"need 1 <= naive_images <= images, got naive_images={naive_images}, images={images}")
    torch.manual_seed(seed)
    model = torchvision.models.get_model(backbone, weights=None).eval().requires_grad_(False)
    model = model.to(memory_format=torch.channels_last)
    folded = copy.deepcopy(model)
    fold_batch_norm(folded)
    x, saliency = _inputs(images, size, seed)
    with torch.no_grad():
        classes = model(x[:1]).argmax(1).repeat(images)  # the same class throughout keeps probabilities comparable
    pace = pixels_per_step or metrics.default_pixels_per_step(size, size)
    steps = -(-size * size // pace)
    for net in (model, folded):  # warm-up: both paths' primitives are created before timing
        _scorer(net)(x[:1], classes[:1])
        _scorer(net)(x[:1].expand(batch_size, -1, -1, -1), classes[:1].expand(batch_size))

    started = time.perf_counter()
    reference = [
        metrics.reference_insertion_deletion(_scorer(model), x[i], classes[i], saliency[i], pace)
        for i in range(naive_images)
    ]
    naive_seconds = time.perf_counter() - started
    log.info("one step at a time: %d images in %.1f s", naive_images, naive_seconds)
    rates, difference = [], 0.0
    for name, net in (("batched", model), ("batched, BatchNorm folded", folded)):
        started = time.perf_counter()
        curves = metrics.insertion_deletion(_scorer(net), x, classes, saliency, pace, batch_size=batch_size)
        seconds = time.perf_counter() - started
        log.info("%s: %d images in %.1f s", name, images, seconds)
        rates.append(images / seconds)
        for i, expected in enumerate(reference):
            for got, want in zip(curves, expected, strict=True):
                difference = max(difference, (got[i] - want).abs().max().item())
    naive_rate = naive_images / naive_seconds
    return {
        "backbone": backbone, "size": size, "steps": steps, "pixels_per_step": pace, "batch_size": batch_size,
        "threads": torch.get_num_threads(), "images": images, "naive_images": naive_images,
        "naive_images_per_second": naive_rate,  # one image, one step, one forward pass at a time
        "batched_images_per_second": rates[0],  # many steps of many images per forward pass, same model
        "folded_images_per_second": rates[1],  # the same, BatchNorm folded into the convolutions (as evaluated)
        "batching_speedup": rates[0] / naive_rate,
        "speedup": rates[1] / naive_rate,
        "max_abs_difference": difference,  # between either batched run's curves and the loop's
        "equal": difference <= tolerance,
        "load_average": os.getloadavg()[0],  # at the end: other work skews the ratio
    }  # fmt: skip


def _render(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    lines = [
        f"{r['backbone']} at {r['size']} px, {r['steps']} steps of {r['pixels_per_step']} pixels, "
        f"{r['threads']} threads; batched: {r['images']} images, {r['batch_size']} perturbed images per pass; loop: "
        f"{r['naive_images']} image(s).",
        "",
        *table(
            ["", "images/s", "speed-up"],
            [
                ["one image, one step per forward pass", fmt(r["naive_images_per_second"], 3), "1.00x"],
                ["batched", fmt(r["batched_images_per_second"], 3), f"{r['batching_speedup']:.2f}x"],
                ["batched, BatchNorm folded", fmt(r["folded_images_per_second"], 3), f"**{r['speedup']:.2f}x**"],
            ],
        ),
        "",
        f"Curves equal: {'yes' if r['equal'] else '**no**'} (largest difference {r['max_abs_difference']:.1e}).",
        "",
    ]
    return lines


SECTIONS = (
    Section(
        "insertion_deletion",
        "Insertion and deletion: batched against one step at a time",
        full={"backbone": "resnet50", "size": 224, "images": 4, "naive_images": 2, "batch_size": 32},
        quick={"backbone": "resnet18", "size": 32, "images": 2, "naive_images": 2, "batch_size": 8},
        run=lambda context: run(**context.budget),
        render=_render,
        reads=(),
        aims=lambda result: [
            Aim("insertion + deletion, batched / one step at a time", dig(result, "speedup"), 5.0, True, "x")
        ],
    ),
)
