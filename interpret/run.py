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

import torch
from torch import Tensor
from tqdm import tqdm

from interpret import metrics, saliency
from interpret import protocol as protocols
from training import checkpoint
from training.backbones import fold_batch_norm
from training.checkpoint import DEFAULT as DEFAULT_CHECKPOINT
from training.checkpoint import Checkpoint
from training.data import DEFAULT_CACHE
from training.devices import resolve_device
from training.images import SELECTION, LabelledImages, load_images, seeded_subset
from training.model import CAStreamNet
from training.options import option

log = logging.getLogger(__name__)

COMPARED = ("gap", "ca")  # the poolings compared on the same images, in table order
TARGETS = ("label", "predicted")
FAITHFULNESS = ("ad", "ag", "ai", "insertion", "deletion")
LOCALISATION = ("pointing", "energy")
LOWER_IS_BETTER = ("ad", "deletion")
GRID = (("gradcam", "gap"), ("gradcam", "ca"), ("attention", "ca"))  # the picture's columns after the image
GROUP = 8  # images explained together


@dataclass
class EvalOptions:
    """The evaluation command's options (``python -m interpret.evaluate --help`` lists them from these fields)."""

    checkpoint: str = option(DEFAULT_CHECKPOINT, "castream checkpoint (default: %(default)s)")
    out: str | None = option(None, "folder for the table and picture (default: the checkpoint's folder)")
    # The default run (ResNet-18, 112 px): about 5 minutes on two idle CPU cores.
    limit: int = option(64, "validation images to explain (default: %(default)s)")
    split: str = option(
        "val",
        "images explained: the validation split the reports show, or the synthetic data's selection split, for "
        "choosing settings without tuning on reported images (default: %(default)s)",
        choices=("val", SELECTION),
    )
    methods: tuple[str, ...] = option(saliency.METHODS, "saliency methods (default: all)", choices=saliency.METHODS)
    target: str = option(
        "label", "explained class: the ground truth, or each model's prediction (default: %(default)s)", choices=TARGETS
    )
    protocol: str = option(
        protocols.DEFAULT,
        "insertion/deletion blur and pace, and Score-CAM upsampling, of a published code (default: %(default)s)",
        choices=sorted(protocols.PROTOCOLS),
    )
    # Overrides of the protocol's settings; None: the protocol's.
    pixels_per_step: int | None = option(None, "override the protocol's insertion/deletion pace")
    blur_kernel: int | None = option(None, "override the protocol's blur kernel size (odd; gkern's klen)")
    blur_sigma: float | None = option(None, "override the protocol's blur sigma (gkern's nsig)")
    batch_size: int = option(32, "images per forward pass (default: %(default)s)")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    cache_dir: str | None = option(str(DEFAULT_CACHE), "folder for cached synthetic images (default: %(default)s)")
    grid_images: int = option(6, "rows of the picture grid (default: %(default)s)")
    seed: int = option(0, "seed of the random validation subset (default: %(default)s)")
    progress: bool = option(True, "no progress bar")

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in saliency.METHODS]
        if unknown or not self.methods:
            raise ValueError(
                f"unknown or no saliency methods {unknown or list(self.methods)}; choose from {saliency.METHODS}"
            )
        if self.target not in TARGETS:
            raise ValueError(f"unknown explained class {self.target!r}; expected one of {TARGETS}")
        protocols.get(self.protocol)
        for name in ("limit", "batch_size", "blur_kernel", "pixels_per_step"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value!r}")
        if self.blur_kernel is not None and self.blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be odd (the substrate keeps the image size), got {self.blur_kernel!r}")
        if self.blur_sigma is not None and self.blur_sigma <= 0:
            raise ValueError(f"blur_sigma must be positive, got {self.blur_sigma!r}")

    def faithfulness_settings(self, height: int, width: int) -> dict[str, Any]:
        """The protocol's settings at this image size, with the options that override them.

        Returns:
            ``protocol`` (its name, and "modified" if anything is overridden), ``blur_kernel``,
            ``blur_sigma``, ``pixels_per_step``, ``steps``, ``tie_order``, ``scorecam_align_corners``
            and ``overrides`` (the names of the settings changed from the protocol's).
        """
        base = protocols.get(self.protocol)
        chosen = {
            "blur_kernel": base.blur_kernel if self.blur_kernel is None else self.blur_kernel,
            "blur_sigma": base.blur_sigma if self.blur_sigma is None else float(self.blur_sigma),
            "pixels_per_step": base.pixels_per_step(height, width)
            if self.pixels_per_step is None
            else self.pixels_per_step,
        }
        protocol_values = {
            "blur_kernel": base.blur_kernel,
            "blur_sigma": base.blur_sigma,
            "pixels_per_step": base.pixels_per_step(height, width),
        }
        overrides = [name for name, value in chosen.items() if value != protocol_values[name]]
        return {
            "protocol": base.name + (" (modified)" if overrides else ""),
            **chosen,
            "steps": math.ceil(height * width / chosen["pixels_per_step"]),
            "pace": base.pace(),
            "tie_order": protocols.TIE_ORDER,
            "scorecam_align_corners": base.scorecam_align_corners,
            "overrides": overrides,
        }


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


def evaluation_images(
    state: Checkpoint, limit: int, seed: int, cache_dir: str | None = None, split: str = "val"
) -> LabelledImages:
    """A seeded random subset of ``limit`` images of the checkpoint's validation split (or ``split``), in index order.

    An ImageFolder's validation split is first narrowed to the images the training run validated on.
    """
    config = state.data

    def choose(size: int) -> Tensor:
        if size == 0:
            raise ValueError(f"the {split} split is empty; check the checkpoint's data folder")
        validated = torch.arange(size)
        if config.val_count and config.val_count < size:
            validated = seeded_subset(size, config.val_count, config.seed)
        return validated[seeded_subset(len(validated), limit, seed).sort().values]

    return load_images(state, split, choose, Path(cache_dir) if cache_dir else None)


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

    def single(self, pooling: str) -> metrics.Score:
        """A score function for one pooling: images (B, 3, H, W), classes (B,) -> probabilities (B,)."""
        heads = Heads(self.model, (pooling,))
        return lambda images, classes: heads(images, classes[:, None])[:, 0]


def compared_keys(methods: tuple[str, ...]) -> list[tuple[str, str]]:
    """The (method, pooling) rows: each method on both poolings, except the maps only the CA model has."""
    return [(m, p) for m in methods for p in COMPARED if p == "ca" or m not in saliency.CA_ONLY]


def passes_per_image(keys: list[tuple[str, str]], steps: int, methods: tuple[str, ...], channels: int) -> int:
    """Backbone passes per image, the progress bar's unit, counting every Score-CAM channel.

    The image itself; for each map its masked image (AD, AG, AI) and the ``2 * steps`` images of its
    insertion and deletion curves; for Score-CAM one masked image per channel of the last stage. Score-CAM
    skips the channels that are flat on an image; those are known only once a group has been through the
    backbone, so the evaluation takes them off the total then (``_Evaluation.explain_group``).
    """
    return 1 + len(keys) * (1 + 2 * steps) + (channels if "scorecam" in methods else 0)


def flat_channels(features: Tensor) -> int:
    """Channels of the last-stage features (N, C, h, w) that are constant on their image: Score-CAM skips them."""
    flat = features.flatten(2)
    return int((flat.amax(2) <= flat.amin(2)).sum())


def explain_and_score(
    model: CAStreamNet, samples: LabelledImages, options: EvalOptions, device: torch.device
) -> Results:
    """Runs every method on every image in groups of ``GROUP``; returns per-image scores."""
    model.requires_grad_(False)  # gradients are taken with respect to features only
    model.eval().to(device, memory_format=torch.channels_last)
    n, _, height, width = samples.images.shape
    protocol = options.faithfulness_settings(height, width)
    keys = compared_keys(options.methods)
    per_image = passes_per_image(keys, protocol["steps"], options.methods, model.backbone.widths[-1])
    progress = {"desc": "evaluate", "unit": "pass", "disable": not options.progress, "dynamic_ncols": True}
    started = time.perf_counter()
    with tqdm(total=n * per_image, **progress) as bar:
        evaluation = _Evaluation(model, samples, options, protocol, keys, bar)
        for first in range(0, n, GROUP):
            evaluation.explain_group(first, device)
    seconds = time.perf_counter() - started
    log.info("evaluated %d images in %.0f s", n, seconds)
    settings = {
        "images": n,
        "image_size": [height, width],
        "seconds": round(seconds, 1),
        "device": str(device),
        **{k: v for k, v in asdict(options).items() if k not in ("progress", "out", *protocol)},
        **protocol,
    }
    return evaluation.results(settings)


class _Evaluation:
    """The per-image results of one evaluation, filled in one group of images at a time.

    It holds what every group needs (the model's heads, the protocol's settings, the progress bar) so that
    each step below takes only the group's own tensors.
    """

    def __init__(
        self,
        model: CAStreamNet,
        samples: LabelledImages,
        options: EvalOptions,
        protocol: dict[str, Any],
        keys: list[tuple[str, str]],
        bar: tqdm,
    ) -> None:
        self.model, self.samples, self.options = model, samples, options
        self.protocol, self.keys, self.bar = protocol, keys, bar
        self.heads = Heads(model, COMPARED)
        self.single = {p: self.heads.single(p) for p in COMPARED}
        self.scores: dict[tuple[str, str], dict[str, list[Tensor]]] = {key: defaultdict(list) for key in keys}
        self.correct: dict[str, list[Tensor]] = defaultdict(list)
        self.predictions: dict[str, list[Tensor]] = defaultdict(list)
        self.grid: dict[tuple[str, str], list[Tensor]] = defaultdict(list)

    def mask(self, images: Tensor, maps: Tensor) -> Tensor:
        """Images with each pixel scaled by its map value, in pixel space (the masked images that are scored)."""
        return metrics.mask_in_pixel_space(images, maps, self.samples.mean, self.samples.std)

    def explain_group(self, first: int, device: torch.device) -> None:
        """Explains and scores the images ``first`` to ``first + GROUP``."""
        group = slice(first, first + GROUP)
        x, labels = self.samples.images[group].to(device), self.samples.labels[group].to(device)
        masks = None if self.samples.masks is None else self.samples.masks[group].to(device)
        with torch.no_grad():
            taps = self.model.forward_features(x)
            logits = {p: self.model.forward_head(taps, p).logits for p in COMPARED}
        self.bar.update(len(x))
        if "scorecam" in self.options.methods:
            self.bar.total -= flat_channels(taps[-1])  # the only change to the total: see passes_per_image
        classes = {p: labels if self.options.target == "label" else logits[p].argmax(1) for p in COMPARED}
        original = {p: logits[p].softmax(1).gather(1, classes[p][:, None])[:, 0] for p in COMPARED}
        for p in COMPARED:
            self.correct[p].append((logits[p].argmax(1) == labels).cpu())
            self.predictions[p].append(logits[p].argmax(1).cpu())
        self.bar.set_postfix(stage="maps", refresh=False)
        maps = self.explain(x, taps, classes)
        height, width = x.shape[-2:]
        for key in self.keys:
            method, pooling = key
            self.bar.set_postfix(stage=f"{method}/{pooling}", refresh=False)
            sal = saliency.to_saliency(maps[key], (height, width))
            for metric, values in self.score(pooling, x, sal, classes[pooling], original[pooling], masks).items():
                self.scores[key][metric].append(values.detach().cpu())
            if key in GRID and first < self.options.grid_images:
                self.grid[key].append(sal[: self.options.grid_images - first].cpu())

    def explain(self, x: Tensor, taps: list[Tensor], classes: dict[str, Tensor]) -> dict[tuple[str, str], Tensor]:
        """Raw maps at feature resolution for every (method, pooling) asked for."""
        methods, model = self.options.methods, self.model
        maps: dict[tuple[str, str], Tensor] = {}
        features = taps[-1].float()
        if any(m in methods for m in saliency.GRADIENT_METHODS):
            for pooling in COMPARED:
                grads = saliency.last_stage_gradients(model, taps, classes[pooling], pooling)
                if "gradcam" in methods:
                    maps[("gradcam", pooling)] = saliency.grad_cam(features, grads)
                if "gradcam++" in methods:
                    maps[("gradcam++", pooling)] = saliency.grad_cam_plus_plus(features, grads)
        if "scorecam" in methods:
            both = torch.stack([classes[p] for p in COMPARED], dim=1)
            cams = saliency.score_cam(
                features,
                x,
                both,
                self.heads,
                self.mask,
                self.options.batch_size,
                self.bar.update,
                align_corners=self.protocol["scorecam_align_corners"],
            )
            for index, pooling in enumerate(COMPARED):
                maps[("scorecam", pooling)] = cams[:, index]
        with torch.no_grad():
            if "attention" in methods:
                maps[("attention", "ca")] = saliency.attention_map(model, taps)
            if "classmap" in methods:
                maps[("classmap", "ca")] = saliency.class_specific_map(model, taps, classes["ca"])
        return maps

    def score(
        self, pooling: str, x: Tensor, sal: Tensor, classes: Tensor, original: Tensor, masks: Tensor | None
    ) -> dict[str, Tensor]:
        """One map's scores on the group: AD, AG, AI, insertion and deletion; pointing and energy where masked."""
        score = self.single[pooling]
        masked = score(self.mask(x, sal), classes)
        self.bar.update(len(x))
        drop_gain = metrics.drop_gain_increase(original, masked)
        insertion, deletion = metrics.insertion_deletion(
            score,
            x,
            classes,
            sal,
            self.protocol["pixels_per_step"],
            blur_kernel=self.protocol["blur_kernel"],
            blur_sigma=self.protocol["blur_sigma"],
            batch_size=self.options.batch_size,
            original=original,
            on_batch=self.bar.update,
        )
        result = {"ad": drop_gain["drop"], "ag": drop_gain["gain"], "ai": drop_gain["increase"]}
        result["insertion"], result["deletion"] = metrics.auc(insertion), metrics.auc(deletion)
        if masks is not None:
            result["pointing"] = metrics.pointing_game(sal, masks).float()
            result["energy"] = metrics.energy_in_mask(sal, masks)
        return result

    def results(self, settings: dict[str, Any]) -> Results:
        """The groups' results joined, image by image."""
        return Results(
            scores={key: {m: torch.cat(v) for m, v in by_metric.items()} for key, by_metric in self.scores.items()},
            correct={p: torch.cat(v) for p, v in self.correct.items()},
            grid={key: torch.cat(v) for key, v in self.grid.items()},
            predictions={p: torch.cat(v) for p, v in self.predictions.items()},
            settings=settings,
        )


def run(options: EvalOptions) -> tuple[Results, LabelledImages, Checkpoint]:
    """Loads the checkpoint and its validation images, and evaluates; returns results, samples and state."""
    state = checkpoint.load(options.checkpoint)
    device = resolve_device(options.device)
    samples = evaluation_images(state, options.limit, options.seed, options.cache_dir, options.split)
    if len(samples.labels) < options.limit:
        log.warning("the %s split has %d images; evaluating all of them", options.split, len(samples.labels))
    model = state.build_model()
    log.debug("folded %d BatchNorm layers into convolutions", fold_batch_norm(model.backbone.net))
    log.info(
        "evaluating %s (%s) on %d images, methods %s",
        options.checkpoint,
        model.config.backbone,
        len(samples.labels),
        ", ".join(options.methods),
    )
    return explain_and_score(model, samples, options, device), samples, state
