"""What the service watches in its model's answers, per served model: the figures of ``service.contract.FIGURES`` of
every image it classifies, observed into histograms, and the validation quantiles of them that the model file
records, as gauges beside them (docs/service.md, "Metrics"; the drift alert in deploy/prometheus/ compares the two).

The figures come from outputs that every batch fetches anyway or that cost nothing more: the logits, and a CA model's
attention, the softmax weights its pooling computes on the way to the logits. A GAP model has no attention and
reports its top-1 probability only.
"""

from __future__ import annotations

import numpy as np

from service.contract import ATTENTION, ATTENTION_FIGURES, FIGURES, LOGITS, figures_of
from service.metrics import Metrics
from service.model import OnnxModel


class Monitor:
    """Observes the figures of each batch ``model`` runs; made once the model is warm (warm-up's zeros would count)."""

    def __init__(self, metrics: Metrics, model: OnnxModel):
        info = model.info
        self.outputs = (LOGITS, ATTENTION) if model.has_attention else (LOGITS,)
        self.figures = FIGURES if model.has_attention else tuple(f for f in FIGURES if f not in ATTENTION_FIGURES)
        # The children are made now, so every figure's series exist from the start, at zero.
        self._observe = {name: metrics.figures[name].labels(model=info.name).observe for name in self.figures}
        reference = info.monitoring
        if reference is not None:
            for name in (name for name in self.figures if name in reference.figures):
                for quantile, value in zip(reference.quantiles, reference.figures[name], strict=True):
                    metrics.figure_reference.labels(model=info.name, figure=name, quantile=f"{quantile:g}").set(value)

    def __call__(self, outputs: dict[str, np.ndarray]) -> None:
        """One batch's ``outputs`` by name, each [n, ...]: three NumPy reductions over the batch, then one observation
        per image and figure."""
        for name, values in figures_of(outputs[LOGITS], outputs.get(ATTENTION)).items():
            observe = self._observe[name]
            for value in values.tolist():
                observe(value)


def watch(metrics: Metrics, model: OnnxModel) -> Monitor:
    """Every later run of ``model`` fetches what its monitor reads and has its figures observed."""
    monitor = Monitor(metrics, model)
    model.watch(monitor, monitor.outputs)
    return monitor
