"""How closely a reduced-precision graph agrees with the float32 one, and the thresholds it must meet.

Measured on validation images, against the float32 graph's outputs (not the labels):
- top-1 agreement: share of images whose predicted class is the same;
- attention peak agreement: share of images whose attention maximum is at the same position;
- attention correlation: mean over images of the Pearson correlation between the two maps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from export.verify import VerificationError
from service.contract import ATTENTION, LOGITS
from training.options import option


@dataclass(frozen=True)
class Thresholds:
    """Minimum agreement of an int8 graph with float32, and minimum speed-up over it on this CPU."""

    top1: float = option(0.99, "int8: minimum top-1 agreement with fp32 (fraction)", flags=("--min-top1",))
    peak: float = option(0.95, "int8: minimum attention-peak agreement (fraction)", flags=("--min-peak",))
    correlation: float = option(0.95, "int8: minimum mean attention correlation", flags=("--min-correlation",))
    speedup: float = option(1.2, "int8: minimum speed-up over fp32 (0: no check)", flags=("--min-speedup",))

    def __post_init__(self) -> None:
        for name in ("top1", "peak", "correlation"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} threshold must be a fraction in [0, 1], got {value!r}")
        if self.speedup < 0:
            raise ValueError(f"speedup threshold must be non-negative (0 disables it), got {self.speedup!r}")


@dataclass(frozen=True)
class Agreement:
    """Agreement over ``images`` validation images; attention fields are None for a GAP graph."""

    images: int
    top1: float
    peak: float | None
    correlation: float | None
    reference_accuracy: float | None = None
    candidate_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def correlations(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Pearson correlation per image between maps (N, h, w); 1 where both maps are flat and equal."""
    a = reference.reshape(len(reference), -1).astype(np.float64)
    b = candidate.reshape(len(candidate), -1).astype(np.float64)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    norms = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    flat = norms < 1e-20
    result = np.where(flat, 0.0, (a * b).sum(axis=1) / np.where(flat, 1.0, norms))
    same = np.abs(reference - candidate).reshape(len(a), -1).max(axis=1) < 1e-6
    return np.where(flat & same, 1.0, result)


def measure(
    reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], labels: np.ndarray | None = None
) -> Agreement:
    """Agreement of ``candidate`` outputs with ``reference`` outputs (both by output name)."""
    predicted, wanted = candidate[LOGITS].argmax(axis=1), reference[LOGITS].argmax(axis=1)
    peak = correlation = None
    if ATTENTION in reference:
        maps, expected = candidate[ATTENTION], reference[ATTENTION]
        flat_maps, flat_expected = maps.reshape(len(maps), -1), expected.reshape(len(expected), -1)
        peak = float(np.mean(flat_maps.argmax(axis=1) == flat_expected.argmax(axis=1)))
        correlation = float(correlations(expected, maps).mean())
    accuracy = (None, None)
    if labels is not None:
        accuracy = (float(np.mean(wanted == labels)), float(np.mean(predicted == labels)))
    return Agreement(len(wanted), float(np.mean(predicted == wanted)), peak, correlation, *accuracy)


def check(agreement: Agreement, thresholds: Thresholds) -> None:
    """Raises :class:`VerificationError` naming every measure below its threshold, and by how much."""
    failures = []
    for name in ("top1", "peak", "correlation"):
        value, minimum = getattr(agreement, name), getattr(thresholds, name)
        if value is not None and not value >= minimum:
            failures.append(f"{name} agreement {value:.4f} < {minimum:g} (short by {minimum - value:.4f})")
    if failures:
        raise VerificationError(
            f"int8 graph disagrees with float32 on {agreement.images} validation images: " + "; ".join(failures)
        )
