"""Which stream recipe makes the attention find the object: an ablation on one frozen backbone.

Every recipe trains only the CA stream on the same frozen backbone (a checkpoint's), from the same
cached taps, and is scored on a *selection* split: synthetic images with masks, from a seed that neither
the training nor the validation split uses, so that the recipe is never chosen on the images a run
reports. Per recipe: CA top-1, the raw attention's pointing game, its mass on the object and that mass
over a uniform map's, the class-specific map's pointing game, and the seconds it took. Grad-CAM on the
GAP model of the same backbone is printed as a reference, and so is the pointing game of a perfect map
at each grid (each cell's share of object pixels), which bounds what any map can score there.

python -m interpret.ablation                                  # the default run's backbone
python -m interpret.ablation --checkpoint runs/x/castream.pt --recipes paper gap-start --epochs 3
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from interpret import metrics as xai_metrics
from interpret import saliency
from training import checkpoint
from training.checkpoint import DEFAULT as DEFAULT_CHECKPOINT
from training.checkpoint import Checkpoint
from training.data import DEFAULT_CACHE, Batches, SyntheticSource
from training.engine import StageSettings, TrainingContext, train_stage
from training.logs import setup_logging
from training.model import CAStream, CAStreamNet
from training.recipes import RECIPES, StreamRecipe
from training.tapcache import CachedTaps

log = logging.getLogger(__name__)

# The recipes compared: the named ones, and the steps between them, one factor at a time.
GRID: dict[str, tuple[StreamRecipe, int | None]] = {  # name: (recipe, input size; None: the checkpoint's)
    "paper": (RECIPES["paper"], None),
    "paper-adamw": (StreamRecipe("paper", "adamw", 1e-3), None),
    "identity-sgd": (StreamRecipe("identity", "sgd", 0.1), None),
    "identity-adamw": (StreamRecipe("identity", "adamw", 1e-3), None),
    "gap-start-sgd": (StreamRecipe("gap", "sgd", 0.1), None),
    "gap-start": (RECIPES["gap-start"], None),
    "gap-start-lr1e-3": (StreamRecipe("gap", "adamw", 1e-3), None),
    "gap-start-lr1e-4": (StreamRecipe("gap", "adamw", 1e-4), None),
    "gap-start-last": (StreamRecipe("gap", "adamw", 3e-4, taps="last"), None),
    "gap-start-last-lr1e-3": (StreamRecipe("gap", "adamw", 1e-3, taps="last"), None),
    "paper-last": (StreamRecipe("paper", "sgd", 0.1, taps="last"), None),
    "gap-start-144px": (RECIPES["gap-start"], 144),
    "paper-144px": (RECIPES["paper"], 144),
}


@dataclass(frozen=True)
class Row:
    recipe: str
    image_size: int
    grid: str
    top1: float  # percent, on the selection split
    pointing: float  # raw attention, percent
    mass: float  # raw attention's share on the object, percent
    mass_over_uniform: float
    classmap_pointing: float  # percent
    seconds: float  # training the stream (the taps are computed once per input size, not counted)


@dataclass
class Split:
    taps: list[Tensor]
    labels: Tensor
    masks: Tensor  # (N, H, W) bool


def _splits(
    state: Checkpoint, model: CAStreamNet, size: int, train_count: int, selection_count: int, cache: Path | None
) -> tuple[Split, Split, float]:
    """Taps of the training and selection splits at ``size`` px; and the backbone's images per second."""
    if state.data.kind != "synthetic":
        raise ValueError("the ablation needs a checkpoint trained on the synthetic data (it scores against masks)")
    config = replace(state.data, image_size=size)
    preprocessing = replace(state.preprocessing, resize=size, crop=size)
    splits, seconds, images = [], 0.0, 0
    for name, count in (("train", train_count), ("selection", selection_count)):
        source = SyntheticSource(config.synthetic_spec(name, count), preprocessing, cache)
        started = time.perf_counter()
        with torch.no_grad():
            chunks = [model.forward_features(x) for x in source.in_order(64)]
        seconds, images = seconds + time.perf_counter() - started, images + len(source)
        taps = [torch.cat(parts) for parts in zip(*chunks, strict=True)]
        splits.append(Split(taps, source.labels, torch.from_numpy(source.masks).bool()))
    return splits[0], splits[1], images / seconds


def perfect_pointing(masks: Tensor, grid: tuple[int, int]) -> float:
    """Pointing game (percent) of the best map a ``grid`` can hold: each cell's share of object pixels."""
    shares = torch.nn.functional.adaptive_avg_pool2d(masks[:, None].float(), grid)[:, 0]
    return (
        100.0 * xai_metrics.pointing_game(saliency.to_saliency(shares, masks.shape[-2:]), masks).float().mean().item()
    )


@torch.no_grad()
def score(model: CAStreamNet, split: Split, batch_size: int = 256) -> dict[str, float]:
    """Top-1, attention pointing and mass, and class-map pointing (percent) on ``split``."""
    hits, pointing, mass, uniform, class_pointing = [], [], [], [], []
    size = split.masks.shape[-2:]
    for start in range(0, len(split.labels), batch_size):
        taps = [t[start : start + batch_size] for t in split.taps]
        labels, masks = split.labels[start : start + batch_size], split.masks[start : start + batch_size]
        output = model.forward_head(taps, "ca")
        hits.append(output.logits.argmax(1) == labels)
        attention = saliency.to_saliency(output.attention, size)  # as the interpretability evaluation scores it
        pointing.append(xai_metrics.pointing_game(attention, masks))
        mass.append(xai_metrics.energy_in_mask(attention, masks))
        uniform.append(masks.flatten(1).float().mean(1))
        maps, _ = model.class_maps_of_taps(taps)
        chosen = maps[torch.arange(len(labels)), labels]
        class_pointing.append(xai_metrics.pointing_game(saliency.to_saliency(chosen, size), masks))
    mean = lambda parts: 100.0 * torch.cat(parts).float().mean().item()  # noqa: E731
    return {
        "top1": mean(hits),
        "pointing": mean(pointing),
        "mass": mean(mass),
        "uniform": mean(uniform),
        "classmap_pointing": mean(class_pointing),
    }


def gradcam_pointing(model: CAStreamNet, split: Split, batch_size: int = 128) -> float:
    """Grad-CAM of the GAP model on the same backbone, for the ground-truth class: pointing game in percent."""
    hits = []
    for start in range(0, len(split.labels), batch_size):
        taps = [t[start : start + batch_size] for t in split.taps]
        labels, masks = split.labels[start : start + batch_size], split.masks[start : start + batch_size]
        grads = saliency.last_stage_gradients(model, taps, labels, "gap")
        maps = saliency.to_saliency(saliency.grad_cam(taps[-1], grads), masks.shape[-2:])
        hits.append(xai_metrics.pointing_game(maps, masks))
    return 100.0 * torch.cat(hits).float().mean().item()


def train_recipe(
    model: CAStreamNet, recipe: StreamRecipe, train: Split, selection: Split, epochs: int, batch_size: int, seed: int
) -> float:
    """Replaces the model's stream by a fresh one made as ``recipe`` says and trains it; returns the seconds."""
    torch.manual_seed(seed)
    backbone = model.backbone
    model.stream = CAStream(backbone.widths, backbone.head_width, recipe.taps, recipe.init, model.paper_init)
    model.config = type(model.config)(**{**model.config.to_dict(), "stream_taps": recipe.taps})
    train_batches = Batches(CachedTaps(train.taps, train.labels), batch_size, True, seed)
    selection_batches = Batches(CachedTaps(selection.taps, selection.labels), batch_size, False, seed)
    settings = StageSettings(epochs, recipe.lr, recipe.optimizer, recipe.momentum, recipe.weight_decay)
    context = TrainingContext(torch.device("cpu"), precision="fp32", progress=False)
    result = train_stage(
        model, "stream", train_batches, selection_batches, settings, context, save=lambda state: None, cache=False
    )
    return result.seconds


def run(
    checkpoint_path: str,
    names: list[str],
    epochs: int = 3,
    train_count: int = 4000,
    selection_count: int = 1000,
    batch_size: int = 32,
    seed: int = 0,
    cache: Path | None = DEFAULT_CACHE,
) -> dict[str, Any]:
    unknown = [n for n in names if n not in GRID]
    if unknown:
        raise ValueError(f"unknown recipes {unknown}; choose from {', '.join(GRID)}")
    state = checkpoint.load(checkpoint_path)
    model = state.build_model()
    model.requires_grad_(False)
    trained_size = state.data.image_size
    rows, references, speeds, splits = [], {}, {}, {}
    for name in names:
        recipe, size = GRID[name]
        size = size or trained_size
        if size not in splits:
            log.info("computing the frozen backbone's taps at %d px", size)
            train, selection, speeds[size] = _splits(state, model, size, train_count, selection_count, cache)
            splits[size] = (train, selection)
            grid = tuple(train.taps[-1].shape[-2:])
            references[size] = {
                "grid": "x".join(map(str, grid)),
                "backbone_images_per_second": round(speeds[size], 1),
                "gradcam_gap_pointing": round(gradcam_pointing(model, selection), 1),
                "perfect_map_pointing": round(perfect_pointing(selection.masks, grid), 1),
                "uniform_mass": round(100.0 * selection.masks.flatten(1).float().mean().item(), 1),
            }
            log.info("references at %d px: %s", size, references[size])
        train, selection = splits[size]
        seconds = train_recipe(model, recipe, train, selection, epochs, batch_size, seed)
        scores = score(model, selection)
        row = Row(
            recipe=name,
            image_size=size,
            grid=references[size]["grid"],
            top1=round(scores["top1"], 1),
            pointing=round(scores["pointing"], 1),
            mass=round(scores["mass"], 1),
            mass_over_uniform=round(scores["mass"] / scores["uniform"], 2),
            classmap_pointing=round(scores["classmap_pointing"], 1),
            seconds=round(seconds, 1),
        )
        log.info("%s", row)
        rows.append(asdict(row))
    return {
        "checkpoint": checkpoint_path,
        "epochs": epochs,
        "train_images": train_count,
        "selection_images": selection_count,
        "recipes": {name: {**asdict(GRID[name][0]), "image_size": GRID[name][1]} for name in names},
        "references": {str(k): v for k, v in references.items()},
        "rows": rows,
    }


def format_table(report: dict[str, Any]) -> str:
    header = (
        "| recipe | input | grid | CA top-1 | attention pointing | mass on object | x uniform "
        "| class-map pointing | s |"
    )
    lines = [header, "|" + "---|" * 9]
    for r in report["rows"]:
        lines.append(
            f"| {r['recipe']} | {r['image_size']} px | {r['grid']} | {r['top1']:.1f} % | {r['pointing']:.1f} % | "
            f"{r['mass']:.1f} % | {r['mass_over_uniform']:.2f} | {r['classmap_pointing']:.1f} % | {r['seconds']:.0f} |"
        )
    lines.append("")
    for size, ref in report["references"].items():
        lines.append(
            f"At {size} px ({ref['grid']} grid): Grad-CAM on the GAP model points at "
            f"{ref['gradcam_gap_pointing']:.1f} %; "
            f"a perfect map at {ref['perfect_map_pointing']:.1f} %; a uniform map puts {ref['uniform_mass']:.1f} % "
            f"of its mass on the object; the frozen backbone runs at {ref['backbone_images_per_second']:.0f} images/s."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m interpret.ablation", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="frozen backbone (default: %(default)s)")
    parser.add_argument("--recipes", nargs="+", default=list(GRID), choices=list(GRID), help="default: all")
    parser.add_argument("--epochs", type=int, default=3, help="stream epochs per recipe (default: %(default)s)")
    parser.add_argument("--train-images", type=int, default=4000, help="default: %(default)s")
    parser.add_argument("--selection-images", type=int, default=1000, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        report = run(
            args.checkpoint, args.recipes, args.epochs, args.train_images, args.selection_images, seed=args.seed
        )
    except (ValueError, FileNotFoundError) as error:
        log.error("%s", error)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
