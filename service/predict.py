"""From one image's model output to its response entry: top-k labels and the attention map."""

from __future__ import annotations

import numpy as np

from service.model import ImageOutput
from service.overlay import PNG_LEVEL, heat_overlay_b64
from service.schemas import AttentionMap, AttentionMode, Label, Prediction


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits.astype(np.float64) - logits.max())
    return shifted / shifted.sum()


def prediction(
    output: ImageOutput,
    view: np.ndarray,
    classes: tuple[str, ...],
    top_k: int,
    mode: AttentionMode,
    png_level: int = PNG_LEVEL,
) -> Prediction:
    """Top ``top_k`` classes by probability, and the attention as ``mode`` asks (None for GAP models).

    ``png_level`` is the zlib level of the overlay PNG.
    """
    scores = softmax(output.logits)
    order = np.argsort(-scores, kind="stable")[: min(top_k, len(classes))]
    labels = [Label(label=classes[i], index=int(i), score=float(scores[i])) for i in order]
    attention = None
    if mode is not AttentionMode.none and output.attention is not None:
        grid = np.asarray(output.attention, np.float32)
        overlay = heat_overlay_b64(view, grid, png_level) if mode is AttentionMode.overlay else None
        attention = AttentionMap(height=grid.shape[0], width=grid.shape[1], values=grid.tolist(), overlay_png=overlay)
    return Prediction(top_k=labels, attention=attention)
