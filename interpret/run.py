"""Interpretability evaluation of a checkpoint: its GAP baseline against its CA model, on the same images.

Both poolings share one frozen backbone, so every forward pass of the backbone serves both heads where
the inputs are the same (the original images, Score-CAM's masked images). For each saliency method and
pooling the evaluation scores AD, AG, AI, insertion and deletion, and, where the data has object masks,
the pointing game and the energy inside the mask.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from tqdm import tqdm

from training import checkpoint, saliency, xai_metrics
from training.data import DEFAULT_CACHE, DataConfig, Preprocessing, SyntheticSource, load_data
from training.model import CAStreamNet

log = logging.getLogger(__name__)

POOLINGS = ("gap", "ca")
TARGETS = ("label", "predicted")
FAITHFULNESS = ("ad", "ag", "ai", "insertion", "deletion")
LOCALISATION = ("pointing", "energy")
LOWER_IS_BETTER = ("ad", "deletion")
GRID = (("gradcam", "gap"), ("gradcam", "ca"), ("attention", "ca"))  # the picture's columns after the image
GROUP = 8  # images explained together


@dataclass
class EvalOptions:
    """The evaluation command's options (see ``python -m training.evaluate --help``)."""

    checkpoint: str = "runs/default/castream.pt"
    out: str | None = None  # default: the checkpoint's folder
    limit: int = 64  # the default run (ResNet-18, 112 px): about 5 minutes on two idle CPU cores
    methods: tuple[str, ...] = saliency.METHODS
    target: str = "label"
    pixels_per_step: int | None = None  # default: the paper's 28 steps at any image size
    blur_kernel: int = xai_metrics.RISE_BLUR_KERNEL
    blur_sigma: float = xai_metrics.RISE_BLUR_SIGMA
    batch_size: int = 32
    device: str = "auto"
    cache_dir: str | None = str(DEFAULT_CACHE)
    grid_images: int = 6
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in saliency.METHODS]
        if unknown or not self.methods:
            raise ValueError(
                f"unknown or no saliency methods {unknown or list(self.methods)}; choose from {saliency.METHODS}"
            )
        if self.target not in TARGETS:
            raise ValueError(f"unknown explained class {self.target!r}; expected one of {TARGETS}")
        for name in ("limit", "batch_size", "blur_kernel"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if self.pixels_per_step is not None and self.pixels_per_step < 1:
            raise ValueError(f"pixels_per_step must be at least 1, got {self.pixels_per_step!r}")


@dataclass
class Samples:
    """The evaluated images, normalised (N, 3, H, W) with ``mean`` and ``std``; labels (N,); object masks
    (N, H, W) or None; the same images as uint8 (N, H, W, 3) for pictures."""

    images: Tensor
    labels: Tensor
    masks: Tensor | None
    pixels: np.ndarray
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class Results:
    """Per (method, pooling): per-image scores in [0, 1] (AUCs, terms, hits); and how they were made."""

    scores: dict[tuple[str, str], dict[str, Tensor]]
    correct: dict[str, Tensor]
    grid: dict[tuple[str, str], Tensor]  # saliency (K, H, W) of the first images, for the picture
    predictions: dict[str, Tensor]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> list[tuple[str, str]]:
        return list(self.scores)

    def mean(self, key: tuple[str, str], metric: str) -> float:
        """A metric in percent over the images."""
        return 100.0 * self.scores[key][metric].double().mean().item()

    def paired_difference(self, method: str, metric: str) -> tuple[float, float]:
        """CA minus GAP in percentage points on the same images, and the standard error of that difference."""
        diff = 100.0 * (self.scores[(method, "ca")][metric] - self.scores[(method, "gap")][metric]).double()
        error = diff.std().item() / math.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        return diff.mean().item(), error

    def accuracy(self, pooling: str) -> float:
        return 100.0 * self.correct[pooling].double().mean().item()


def resolve_device(request: str) -> torch.device:
    if request == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(request)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {request!r} was asked for but CUDA is not available; use --device cpu")
    return device


def load_samples(state: dict[str, Any], limit: int, seed: int, cache_dir: str | None = None) -> Samples:
    """A seeded random subset of ``limit`` images of the checkpoint's validation split."""
    config = DataConfig(**state["data"])
    preprocessing = Preprocessing.from_dict(state["preprocessing"])
    classes = tuple(state["classes"])
    cache = Path(cache_dir) if cache_dir else None
    norm = (tuple(preprocessing.mean), tuple(preprocessing.std))
    if config.kind == "synthetic":
        # Only the validation split is needed: build that one alone.
        source = SyntheticSource(config.synthetic_spec("val"), preprocessing, cache)
        index = _subset(len(source), limit, seed)
        pixels = source.images[index]
        masks = torch.from_numpy(np.asarray(source.masks)[index.numpy()])
        normalised = preprocessing.normalize(pixels)
        return Samples(normalised, source.labels[index], masks, pixels.numpy(), classes, *norm)
    dataset = load_data(config, preprocessing, cache).val.dataset
    index = _subset(len(dataset), limit, seed)
    images, labels = zip(*(dataset[i] for i in index.tolist()), strict=True)
    images_ = torch.stack(images)
    mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)
    pixels = (images_ * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return Samples(images_, torch.tensor(labels), None, pixels, classes, *norm)


def _subset(size: int, limit: int, seed: int) -> Tensor:
    if size == 0:
        raise ValueError("the validation split is empty; check the checkpoint's data folder")
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:limit].sort().values


class Heads:
    """Softmax probability of given classes under several poolings, from one pass of the shared backbone."""

    def __init__(self, model: CAStreamNet, poolings: tuple[str, ...]) -> None:
        self.model, self.poolings = model, poolings

    @torch.no_grad()
    def __call__(self, images: Tensor, classes: Tensor) -> Tensor:
        """images (B, 3, H, W), classes (B, M) -> probabilities (B, M), M = number of poolings."""
        taps = self.model.forward_features(images)
        probs = [self.model.forward_head(taps, p).logits.softmax(1) for p in self.poolings]
        return torch.stack([prob.gather(1, classes[:, m, None])[:, 0] for m, prob in enumerate(probs)], dim=1)

    def single(self, pooling: str) -> xai_metrics.Score:
        """A score function for one pooling: images (B, 3, H, W), classes (B,) -> probabilities (B,)."""
        heads = Heads(self.model, (pooling,))
        return lambda images, classes: heads(images, classes[:, None])[:, 0]


def fold_batch_norm(module: nn.Module) -> int:
    """Folds every eval-mode BatchNorm into the convolution before it, in place; returns how many.

    The function computed is the same (up to float rounding) and each forward pass is cheaper. Pairs are
    found by torchvision's naming (``convK`` then ``bnK`` in one module, as in ResNets) and inside
    ``nn.Sequential`` (a convolution directly followed by a BatchNorm, as in ResNet downsampling).
    """
    folded = 0
    for parent in list(module.modules()):
        pairs = []
        for name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm2d) and name.startswith("bn"):
                pairs.append(("conv" + name[2:], name))
        if isinstance(parent, nn.Sequential):
            names = [name for name, _ in parent.named_children()]
            pairs += [(a, b) for a, b in zip(names, names[1:], strict=False)]
        for conv_name, bn_name in pairs:
            conv, bn = getattr(parent, conv_name, None), getattr(parent, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and not bn.training:
                if conv.out_channels == bn.num_features:
                    setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
                    setattr(parent, bn_name, nn.Identity())
                    folded += 1
    return folded


def evaluate(model: CAStreamNet, samples: Samples, options: EvalOptions, device: torch.device) -> Results:
    """Runs every method on every image in groups; returns per-image scores."""
    model.requires_grad_(False)  # gradients are taken with respect to features only
    model.eval().to(device, memory_format=torch.channels_last)
    n, _, height, width = samples.images.shape
    pixels_per_step = options.pixels_per_step or xai_metrics.default_pixels_per_step(height, width)
    steps = math.ceil(height * width / pixels_per_step)
    keys = [(m, p) for m in options.methods for p in POOLINGS if p == "ca" or m not in saliency.CA_ONLY]
    heads = Heads(model, POOLINGS)
    single = {p: heads.single(p) for p in POOLINGS}

    def mask(images: Tensor, maps: Tensor) -> Tensor:
        return xai_metrics.mask_in_pixel_space(images, maps, samples.mean, samples.std)

    channels = model.backbone.widths[-1]
    per_image = len(keys) * (1 + 2 * steps) + (channels if "scorecam" in options.methods else 0) + 1
    bar = tqdm(total=n * per_image, desc="evaluate", unit="pass", disable=not options.progress, dynamic_ncols=True)
    scores: dict[tuple[str, str], dict[str, list[Tensor]]] = {key: defaultdict(list) for key in keys}
    correct: dict[str, list[Tensor]] = defaultdict(list)
    predictions: dict[str, list[Tensor]] = defaultdict(list)
    grid: dict[tuple[str, str], list[Tensor]] = defaultdict(list)
    started = time.perf_counter()
    for first in range(0, n, GROUP):
        x = samples.images[first : first + GROUP].to(device)
        labels = samples.labels[first : first + GROUP].to(device)
        masks = None if samples.masks is None else samples.masks[first : first + GROUP].to(device)
        with torch.no_grad():
            taps = model.forward_features(x)
            logits = {p: model.forward_head(taps, p).logits for p in POOLINGS}
        bar.update(len(x))
        classes = {p: labels if options.target == "label" else logits[p].argmax(1) for p in POOLINGS}
        original = {p: logits[p].softmax(1).gather(1, classes[p][:, None])[:, 0] for p in POOLINGS}
        for p in POOLINGS:
            correct[p].append((logits[p].argmax(1) == labels).cpu())
            predictions[p].append(logits[p].argmax(1).cpu())
        bar.set_postfix(stage="maps")
        maps = _explain(model, x, taps, classes, options, heads, mask, bar)
        for key in keys:
            method, pooling = key
            bar.set_postfix(stage=f"{method}/{pooling}")
            sal = saliency.to_saliency(maps[key], (height, width))
            o = single[pooling](mask(x, sal), classes[pooling])
            bar.update(len(x))
            result = xai_metrics.drop_gain_increase(original[pooling], o)
            insertion, deletion = xai_metrics.insertion_deletion(
                single[pooling],
                x,
                classes[pooling],
                sal,
                pixels_per_step,
                blur_kernel=options.blur_kernel,
                blur_sigma=options.blur_sigma,
                batch_size=options.batch_size,
                original=original[pooling],
                on_batch=bar.update,
            )
            result = {"ad": result["drop"], "ag": result["gain"], "ai": result["increase"]}
            result["insertion"], result["deletion"] = xai_metrics.auc(insertion), xai_metrics.auc(deletion)
            if masks is not None:
                result["pointing"] = xai_metrics.pointing_game(sal, masks).float()
                result["energy"] = xai_metrics.energy_in_mask(sal, masks)
            for metric, values in result.items():
                scores[key][metric].append(values.detach().cpu())
            if key in GRID and first < options.grid_images:
                grid[key].append(sal[: options.grid_images - first].cpu())
    bar.close()
    seconds = time.perf_counter() - started
    log.info("evaluated %d images in %.0f s", n, seconds)
    return Results(
        scores={key: {m: torch.cat(v) for m, v in metrics.items()} for key, metrics in scores.items()},
        correct={p: torch.cat(v) for p, v in correct.items()},
        grid={key: torch.cat(v) for key, v in grid.items()},
        predictions={p: torch.cat(v) for p, v in predictions.items()},
        settings={
            "images": n,
            "image_size": [height, width],
            "pixels_per_step": pixels_per_step,
            "steps": steps,
            "seconds": round(seconds, 1),
            "device": str(device),
            **{k: v for k, v in asdict(options).items() if k not in ("progress", "out", "pixels_per_step")},
        },
    )


def _explain(
    model: CAStreamNet,
    x: Tensor,
    taps: list[Tensor],
    classes: dict[str, Tensor],
    options: EvalOptions,
    heads: Heads,
    mask: Any,
    bar: tqdm,
) -> dict[tuple[str, str], Tensor]:
    """Raw maps at feature resolution for every (method, pooling) asked for."""
    methods = options.methods
    maps: dict[tuple[str, str], Tensor] = {}
    features = taps[-1].float()
    if any(m in methods for m in saliency.GRADIENT_METHODS):
        for pooling in POOLINGS:
            grads = saliency.last_stage_gradients(model, taps, classes[pooling], pooling)
            if "gradcam" in methods:
                maps[("gradcam", pooling)] = saliency.grad_cam(features, grads)
            if "gradcam++" in methods:
                maps[("gradcam++", pooling)] = saliency.grad_cam_plus_plus(features, grads)
    if "scorecam" in methods:
        flat = features.flatten(2)
        skipped = int((flat.amax(2) <= flat.amin(2)).sum())
        bar.total -= skipped  # flat channels mask nothing and are never scored
        both = torch.stack([classes[p] for p in POOLINGS], dim=1)
        cams = saliency.score_cam(features, x, both, heads, mask, options.batch_size, bar.update)
        for index, pooling in enumerate(POOLINGS):
            maps[("scorecam", pooling)] = cams[:, index]
    with torch.no_grad():
        if "attention" in methods:
            maps[("attention", "ca")] = saliency.attention_map(model, taps)
        if "classmap" in methods:
            maps[("classmap", "ca")] = saliency.class_specific_map(model, x, classes["ca"])
    return maps


def run(options: EvalOptions) -> tuple[Results, Samples, dict[str, Any]]:
    """Loads the checkpoint and its validation images, and evaluates; returns results, samples and state."""
    state = checkpoint.load(options.checkpoint)
    device = resolve_device(options.device)
    samples = load_samples(state, options.limit, options.seed, options.cache_dir)
    if len(samples.labels) < options.limit:
        log.warning("the validation split has %d images; evaluating all of them", len(samples.labels))
    model = checkpoint.build_model(state)
    log.debug("folded %d BatchNorm layers into convolutions", fold_batch_norm(model.backbone.net))
    log.info(
        "evaluating %s (%s) on %d images, methods %s",
        options.checkpoint,
        model.config.backbone,
        len(samples.labels),
        ", ".join(options.methods),
    )
    return evaluate(model, samples, options, device), samples, state
