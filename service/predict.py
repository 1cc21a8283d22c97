"""From one image's model output to its response entry: top-k labels, attention and class maps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.contract import ATTENTION, CLASS_MAPS, EMBEDDING, LOGITS
from service.model import ImageOutput, OnnxModel
from service.overlay import DISPLAY_SIDE, PNG_LEVEL, b64, heat_overlay, image_overlay
from service.preprocess import Prepared
from service.schemas import AttentionMap, AttentionMode, ClassMap, Label, OverlayArea, OverlayFormat, Prediction


@dataclass(frozen=True)
class Options:
    """What a classify request asks for beyond the top-k labels."""

    top_k: int = 5
    attention: AttentionMode = AttentionMode.grid
    class_maps: bool = False  # a map for each top-k entry
    explain: tuple[int, ...] = ()  # class indices to add, each with its map
    overlay_on: OverlayArea = OverlayArea.crop
    png_level: int = PNG_LEVEL
    overlay_size: int = DISPLAY_SIDE  # the longest side of a whole-image overlay, in pixels
    overlay_format: OverlayFormat = OverlayFormat.png
    embedding: bool = False  # each image's embedding (the pooled vector the classifier reads)

    @property
    def needs_class_maps(self) -> bool:
        return self.class_maps or bool(self.explain)

    def outputs(self, model: OnnxModel) -> frozenset[str]:
        """The model outputs the answer needs; 422 ``no_<output>`` for one it asks for that the model's file lacks.

        Attention is returned where the model has it (a GAP model answers without); anything else asked for must be
        there.
        """
        required = {LOGITS}
        if self.needs_class_maps:
            required.add(CLASS_MAPS)
        if self.embedding:
            required.add(EMBEDDING)
        model.require(required)
        if self.attention is not AttentionMode.none and model.has(ATTENTION):
            return frozenset({*required, ATTENTION})
        return frozenset(required)

    @property
    def display(self) -> int:
        """The longest side at which the image is kept for whole-image overlays; 0 when none is drawn."""
        wanted = self.attention is AttentionMode.overlay and self.overlay_on is OverlayArea.image
        return self.overlay_size if wanted else 0


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits.astype(np.float64) - logits.max())
    return shifted / shifted.sum()


def _overlay(grid: np.ndarray, prepared: Prepared, options: Options) -> dict[str, str]:
    """The response's overlay field for ``grid``: ``{"overlay_<format>": base64}``, empty unless overlays are asked."""
    if options.attention is not AttentionMode.overlay:
        return {}
    fmt, level = options.overlay_format.value, options.png_level
    if options.overlay_on is OverlayArea.image and prepared.original is not None:
        data = image_overlay(prepared.original, grid, prepared.box, prepared.size, png_level=level, fmt=fmt)
    else:
        data = heat_overlay(prepared.view, grid, png_level=level, fmt=fmt)
    return {f"overlay_{fmt}": b64(data)}


def _class_map(output: ImageOutput, index: int, prepared: Prepared, options: Options) -> ClassMap:
    grid = np.asarray(output[CLASS_MAPS][index], np.float32)
    constant = float(output[LOGITS][index]) - float(grid.sum(dtype=np.float64))
    return ClassMap(
        height=grid.shape[0], width=grid.shape[1], values=grid.tolist(), constant=constant,
        **_overlay(grid, prepared, options),
    )  # fmt: skip


def prediction(output: ImageOutput, prepared: Prepared, classes: tuple[str, ...], options: Options) -> Prediction:
    """Top ``options.top_k`` classes by probability, the attention, class maps and embedding as ``options`` ask.

    Attention is None for GAP models; class maps need a model that has them (checked before running).
    """
    scores = softmax(output[LOGITS])

    def label(index: int, with_map: bool) -> Label:
        class_map = _class_map(output, index, prepared, options) if with_map else None
        return Label(label=classes[index], index=index, score=float(scores[index]), map=class_map)

    order = np.argsort(-scores, kind="stable")[: min(options.top_k, len(classes))]
    labels = [label(int(i), options.class_maps) for i in order]
    explained = [label(i, True) for i in options.explain]
    attention = None
    if options.attention is not AttentionMode.none and ATTENTION in output:
        grid = np.asarray(output[ATTENTION], np.float32)
        attention = AttentionMap(
            height=grid.shape[0], width=grid.shape[1], values=grid.tolist(), **_overlay(grid, prepared, options)
        )
    embedding = output[EMBEDDING].tolist() if options.embedding else None
    return Prediction(top_k=labels, attention=attention, explained=explained, embedding=embedding)
