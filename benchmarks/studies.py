"""Studies measured by their own commands and kept in ``benchmarks/results.json``: the report renders their records.

- ``ablation``: which stream recipe localises (``interpret.ablation``, docs/ablation.md);
- ``parity``: the rounding between ONNX Runtime and PyTorch that the export tolerates (``export.parity``);
- ``train_default``: where the time of one training run goes, read from its run folder (``training.fit``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.sections import Section, fmt, table
from training.checkpoint import DEFAULT as DEFAULT_CHECKPOINT


def training_run(run: str) -> dict[str, Any]:
    """Seconds and images per second of each stage of the run in folder ``run``, from its records."""
    folder = Path(run)
    metrics = json.loads((folder / "metrics.json").read_text())
    runtime = json.loads((folder / "config.json").read_text())["runtime"]
    phases = []
    for stage, done in metrics["stages"].items():
        sizes = dict.fromkeys(record.get("image_size") for record in done["history"])
        for size in sizes:
            epochs = [record for record in done["history"] if record.get("image_size") == size]
            speeds = [record["train_images_per_second"] for record in epochs]
            phases.append({"stage": stage, "image_size": size, "epochs": len(epochs), "images_per_second": speeds})
        phases[-1]["seconds"] = done["seconds"]  # a stage's seconds cover all its phases; shown on its last
    return {
        "run": run,
        "cpu": runtime.get("cpu") or "a CPU the run did not record",
        "autocast": runtime.get("autocast"),
        "data_seconds": metrics.get("data_seconds"),
        "train_seconds": metrics.get("train_seconds"),
        "val_top1": {pooling: metrics[f"val_top1_{pooling}"] for pooling in ("gap", "ca")},
        "phases": phases,
    }


def _render_training(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    rows = [["data", "synthetic images generated or read from the cache", fmt(r["data_seconds"], 0)]]
    for phase in r["phases"]:
        speeds = phase["images_per_second"]
        size = f" at {phase['image_size']} px" if phase["image_size"] else ""
        what = f"{phase['epochs']} epochs{size}, {min(speeds):.0f}-{max(speeds):.0f} images/s"
        rows.append([phase["stage"], what, fmt(phase.get("seconds"), 0) if "seconds" in phase else "(with the next)"])
    rows.append(["stages together", "", fmt(r["train_seconds"], 0)])
    if r.get("wall_seconds"):
        rows.append(
            ["whole command", "wall time, imports and the final validation included", fmt(r["wall_seconds"], 0)]
        )
    return [
        f"`{r['run']}` on {r['cpu']}; autocast: {r['autocast']}. Validation top-1: GAP {r['val_top1']['gap']} %, "
        f"CA {r['val_top1']['ca']} %.",
        "",
        *table(["stage", "what it does", "seconds"], rows),
        "",
        *([r["note"], ""] if r.get("note") else []),
    ]


def _render_parity(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    scales = {"logits": "of the largest absolute logit", "attention": "of the largest weight",
              "class_maps": "of the largest absolute logit"}  # fmt: skip
    rows = [
        [f"{name} ({scales[name]})", f"{worst:.2g}", f"{r['tolerance'][name]:g}", f"{r['margin'][name]:.0f}x"]
        for name, worst in r["worst"].items()
    ]
    return [
        f"The largest difference over {r['images']:,} validation images of `{r['checkpoint']}`, relative to each "
        "output's scale, against the export's tolerance (docs/onnx-model.md):",
        "",
        *table(["output", "largest difference", "tolerance", "room"], rows),
        "",
    ]


def _render_ablation(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    rows = [
        [row["recipe"], f"{row['image_size']} px", row["grid"], fmt(row["top1"], 1, " %"),
         fmt(row["pointing"], 1, " %"), fmt(row["mass"], 1, " %"), f"{row['mass_over_uniform']:.2f}",
         fmt(row["classmap_pointing"], 1, " %"), fmt(row["seconds"], 0)]
        for row in r["rows"]
    ]  # fmt: skip
    header = ["recipe", "input", "grid", "CA top-1", "attention pointing", "mass on object", "x uniform",
              "class-map pointing", "s"]  # fmt: skip
    references = [
        f"At {size} px ({ref['grid']} grid): Grad-CAM on the GAP model points at {ref['gradcam_gap_pointing']:.1f} %; "
        f"a perfect map at {ref['perfect_map_pointing']:.1f} %; a uniform map puts {ref['uniform_mass']:.1f} % of its "
        f"mass on the object; the frozen backbone runs at {ref['backbone_images_per_second']:.0f} images/s."
        for size, ref in r["references"].items()
    ]
    return [
        f"Every recipe trains only the stream of `{r['checkpoint']}` for {r['epochs']} epochs on "
        f"{r['train_images']:,} images, scored on {r['selection_images']:,} images of a selection split that no "
        "reported figure uses; what it shows is in [docs/ablation.md](docs/ablation.md).",
        "",
        *table(header, rows),
        "",
        *(line for reference in references for line in (reference, "")),
    ]


def _run_ablation(budget: dict[str, Any]) -> dict[str, Any]:
    from interpret import ablation

    recipes = list(ablation.GRID) if list(budget["recipes"]) == ["all"] else list(budget["recipes"])
    return ablation.run(budget["checkpoint"], recipes, budget["epochs"], budget["train_images"],
                        budget["selection_images"])  # fmt: skip


def _run_parity(budget: dict[str, Any]) -> dict[str, Any]:
    from export import parity

    return parity.run(budget["checkpoint"], budget["images"], list(budget["batch_sizes"]))


SECTIONS = (
    Section(
        "train_default",
        "Training the default model",
        full={"run": "runs/default"},
        quick={"run": "checkpoints/default"},
        run=lambda context: training_run(context.budget["run"]),
        render=_render_training,
        reads=(),
        recorded=True,
    ),
    Section(
        "parity",
        "Export parity: the rounding between ONNX Runtime and PyTorch",
        full={"checkpoint": DEFAULT_CHECKPOINT, "images": 1000, "batch_sizes": (1, 8, 32)},
        quick={"checkpoint": DEFAULT_CHECKPOINT, "images": 8, "batch_sizes": (1, 8)},
        run=lambda context: _run_parity(dict(context.budget)),
        render=_render_parity,
        reads=(),
        recorded=True,
    ),
    Section(
        "ablation",
        "Which stream recipe localises: the ablation",
        full={"checkpoint": DEFAULT_CHECKPOINT, "recipes": ("all",), "epochs": 3, "train_images": 4000,
              "selection_images": 1000},
        quick={"checkpoint": DEFAULT_CHECKPOINT, "recipes": ("paper", "gap-start"), "epochs": 0, "train_images": 32,
               "selection_images": 32},
        run=lambda context: _run_ablation(dict(context.budget)),
        render=_render_ablation,
        reads=(),
        recorded=True,
    ),
)  # fmt: skip
