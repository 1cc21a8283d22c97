"""The evaluation's outputs: a table in the paper's layout (Markdown, CSV), findings, a picture grid, JSON."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from interpret.run import COMPARED, FAITHFULNESS, GRID, LOCALISATION, LOWER_IS_BETTER, Results
from interpret.saliency import LABELS
from training.images import LabelledImages

log = logging.getLogger(__name__)

STEM = "interpretability"
HEADERS = {
    "ad": "AD ↓",
    "ag": "AG ↑",
    "ai": "AI ↑",
    "insertion": "Insertion ↑",
    "deletion": "Deletion ↓",
    "pointing": "Pointing game ↑",
    "energy": "Energy in mask ↑",
}
NAMES = {
    "ad": "AD",
    "ag": "AG",
    "ai": "AI",
    "insertion": "insertion",
    "deletion": "deletion",
    "pointing": "pointing game",
    "energy": "energy in mask",
}


SPLIT_NAMES = {"val": "validation", "selection": "selection-split"}


def metrics_of(results: Results) -> list[str]:
    present = next(iter(results.scores.values()))
    return [m for m in (*FAITHFULNESS, *LOCALISATION) if m in present]


def markdown(
    results: Results,
    checkpoint_metrics: dict[str, Any] | None = None,
    title: str = "Interpretability: GAP vs CA",
    classes: dict[str, dict[str, Any]] | None = None,
) -> str:
    """The table (rows: method x pooling; all values in %), the settings, and the CA-vs-GAP comparison.

    Args:
        checkpoint_metrics: the checkpoint's own ``val_top1_gap`` / ``val_top1_ca`` (whole validation split).
        classes: :func:`by_class` of the same results, for the section class by class (left out when empty).
    """
    metrics = metrics_of(results)
    s = results.settings
    whole = checkpoint_metrics or {}
    whole_split = (
        f" (whole validation split: GAP {whole['val_top1_gap']:.2f} %, CA {whole['val_top1_ca']:.2f} %)"
        if "val_top1_gap" in whole and "val_top1_ca" in whole
        else ""
    )
    lines = [
        f"# {title}",
        "",
        f"Checkpoint `{s.get('checkpoint', '?')}`, {s['images']} {SPLIT_NAMES[s.get('split', 'val')]} images at "
        f"{s['image_size'][0]} x {s['image_size'][1]} px, "
        f"explained class: {'ground truth' if s.get('target') == 'label' else 'prediction'}. "
        f"Top-1 on these images: GAP {results.accuracy('gap'):.2f} %, CA {results.accuracy('ca'):.2f} %{whole_split}.",
        protocol_line(s) + " All values in %.",
        "",
        "| Method | Pooling | " + " | ".join(HEADERS[m] for m in metrics) + " |",
        "|---|---|" + "---:|" * len(metrics),
    ]
    for method, pooling in results.rows:
        values = " | ".join(f"{results.mean((method, pooling), m):.2f}" for m in metrics)
        lines.append(f"| {LABELS[method]} | {pooling.upper()} | {values} |")
    findings = comparison(results)
    if findings:
        lines += ["", "## CA vs GAP, metric by metric", "", *[f"- {line}" for line in findings]]
    lines += class_section(classes or {}, results)
    return "\n".join(lines) + "\n"


def protocol_line(settings: dict[str, Any]) -> str:
    """The protocol that produced a table: its name and the parameters it ran with."""
    s = settings
    overrides = s.get("overrides") or []
    changed = f"; changed from the protocol: {', '.join(overrides)}" if overrides else ""
    corners = s.get("scorecam_align_corners")
    scorecam = "" if corners is None else f" Score-CAM masks upsampled with align_corners={corners}."
    ties = f", ties ordered by {s['tie_order']}" if s.get("tie_order") else ""
    return (
        f"Protocol `{s.get('protocol', 'unnamed')}` for insertion/deletion: {s['pixels_per_step']} pixels per step "
        f"({s['steps']} steps{'; ' + s['pace'] if s.get('pace') and not overrides else ''}){ties}; insertion "
        f"substrate blurred with gkern({s['blur_kernel']}, {s['blur_sigma']:g}) (the Gaussian filter of a point on a "
        f"{s['blur_kernel']} x {s['blur_kernel']} grid, reflecting borders, truncated at 4 sigma), zero-padded"
        f"{changed}.{scorecam}"
    )


def comparison(results: Results) -> list[str]:
    """For each method run on both poolings: which pooling wins each metric, by how much (paired, same images)."""
    lines = []
    for method in dict.fromkeys(m for m, _ in results.rows):
        if not all((method, p) in results.scores for p in COMPARED):
            continue
        parts = []
        for metric in metrics_of(results):
            diff, error = results.paired_difference(method, metric)
            diff = round(diff, 2) + 0.0  # no "-0.00"
            better = round(-diff if metric in LOWER_IS_BETTER else diff, 2)  # judged at the precision shown
            verdict = "CA beats GAP" if better > 0 else "GAP beats CA" if better < 0 else "tie"
            parts.append(f"{NAMES[metric]}: {verdict} ({diff:+.2f} ± {error:.2f})")
        lines.append(f"{LABELS[method]}: " + "; ".join(parts) + ".")
    if lines:
        lines.append(
            "Differences are CA minus GAP in percentage points on the same images, ± one paired standard error."
        )
    return lines


def by_class(results: Results, labels: Any, classes: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The localisation scores class by class: for each class with images, its image count and, per method and
    pooling, the pointing game and energy in mask in % over that class's images. Empty without masks."""
    metrics = [m for m in metrics_of(results) if m in LOCALISATION]
    labels = np.asarray(labels).reshape(-1)
    if not metrics or any(len(results.scores[key][metrics[0]]) != len(labels) for key in results.rows):
        return {}
    table: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(classes):
        chosen = labels == index
        if not chosen.any():
            continue
        row: dict[str, Any] = {"images": int(chosen.sum())}
        for key in results.rows:
            scores = {m: results.scores[key][m].double().numpy()[chosen] for m in metrics}
            row["/".join(key)] = {m: round(100.0 * float(values.mean()), 2) for m, values in scores.items()}
        table[name] = row
    return table


def class_section(table: dict[str, dict[str, Any]], results: Results) -> list[str]:
    """Markdown for :func:`by_class`: one row per class, ``pointing / energy`` per method, the weakest first for
    the first row of the main table that has them (the raw attention where it was computed)."""
    if not table:
        return []
    keys = ["/".join(key) for key in results.rows]
    method, pooling = ("attention", "ca") if ("attention", "ca") in results.rows else results.rows[0]
    order = sorted(table, key=lambda name: (table[name][f"{method}/{pooling}"]["pointing"], name))
    lines = [
        "",
        "## Localisation by class",
        "",
        f"Pointing game / energy in mask, in %, over each class's images; classes in increasing order of "
        f"{pooling.upper()} {LABELS[method]}'s pointing game. A map that finds an object's place but peaks off its "
        "pixels (a hollow or thin shape) misses the pointing game while keeping its energy.",
        "",
        "| class | images | " + " | ".join(f"{p.upper()} {LABELS[m]}" for m, p in results.rows) + " |",
        "|---|---:|" + "---:|" * len(keys),
    ]
    for name in order:
        row = table[name]
        cells = " | ".join(f"{row[k]['pointing']:.1f} / {row[k]['energy']:.1f}" for k in keys)
        lines.append(f"| {name} | {row['images']} | {cells} |")
    return lines


def table_csv(results: Results) -> str:
    """One row per method and pooling: the means in % and their standard errors."""
    metrics = metrics_of(results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    s = results.settings
    protocol = [s.get("protocol", ""), s["blur_kernel"], s["blur_sigma"], s["pixels_per_step"], s["steps"]]
    writer.writerow(
        [
            "method",
            "pooling",
            "images",
            *metrics,
            *[f"{m}_se" for m in metrics],
            "protocol",
            "blur_kernel",
            "blur_sigma",
            "pixels_per_step",
            "steps",
        ]
    )
    for key in results.rows:
        means = [f"{results.mean(key, m):.4f}" for m in metrics]
        errors = []
        for m in metrics:
            values = 100.0 * results.scores[key][m].double()
            errors.append(f"{values.std().item() / np.sqrt(len(values)):.4f}" if len(values) > 1 else "")
        images = len(next(iter(results.scores[key].values())))
        writer.writerow([LABELS[key[0]], key[1], images, *means, *errors, *protocol])
    return buffer.getvalue()


def summary(results: Results, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything in the table plus the settings, as plain JSON types."""
    return {
        "protocol": protocol_line(results.settings),
        "settings": results.settings,
        "top1": {p: round(results.accuracy(p), 3) for p in COMPARED},
        "rows": [
            {"method": m, "pooling": p, **{k: round(results.mean((m, p), k), 4) for k in metrics_of(results)}}
            for m, p in results.rows
        ],
        "comparison": comparison(results),
        **(extra or {}),
    }


def picture_grid(results: Results, samples: LabelledImages, path: Path) -> Path | None:
    """Rows of images; columns: the image, GAP Grad-CAM, CA Grad-CAM, CA raw attention (those computed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [key for key in GRID if key in results.grid]
    if not columns:
        log.warning("no picture: none of %s was computed", ", ".join(f"{m}/{p}" for m, p in GRID))
        return None
    rows = len(results.grid[columns[0]])
    figure, axes = plt.subplots(rows, 1 + len(columns), figsize=(2.2 * (1 + len(columns)), 2.3 * rows), squeeze=False)
    for row in range(rows):
        image = samples.pixels[row]
        label = samples.classes[int(samples.labels[row])]
        guesses = ", ".join(f"{p.upper()}: {samples.classes[int(results.predictions[p][row])]}" for p in COMPARED)
        axes[row, 0].imshow(image)
        axes[row, 0].set_ylabel(f"{label}\n({guesses})", fontsize=7)
        for col, key in enumerate(columns, start=1):
            axes[row, col].imshow(image)
            axes[row, col].imshow(results.grid[key][row].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        for col in range(1 + len(columns)):
            if samples.masks is not None:
                axes[row, col].contour(samples.masks[row].numpy(), levels=[0.5], colors="white", linewidths=0.6)
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
    titles = ["image"] + [f"{p.upper()} {LABELS[m] if m != 'attention' else 'raw attention'}" for m, p in columns]
    for col, title in enumerate(titles):
        axes[0, col].set_title(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write(results: Results, samples: LabelledImages, out: Path, extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """Writes interpretability.md, .csv, .json and .png into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / f"{STEM}.{kind}" for kind in ("md", "csv", "json")}
    classes = by_class(results, samples.labels, samples.classes)
    paths["md"].write_text(markdown(results, (extra or {}).get("checkpoint_metrics"), classes=classes))
    paths["csv"].write_text(table_csv(results))
    paths["json"].write_text(json.dumps({**summary(results, extra), "by_class": classes}, indent=2) + "\n")
    picture = picture_grid(results, samples, out / f"{STEM}.png")
    if picture is not None:
        paths["png"] = picture
    return paths
