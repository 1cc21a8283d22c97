"""What the service's monitored figures (``service.contract.FIGURES``) look like on validation images: their quantiles,
recorded in the model file (metadata property ``monitoring``) for the drift alert to compare the live medians with.

They are computed from the graph being written, run by ONNX Runtime on the CPU, so they are the numbers the service
will compute (an int8 or fp16 file's own). The count is a trade of time against precision: with n images, the rank
of a sample quartile is off by about sqrt(0.25 * 0.75 / n), 1.9 percentile points at 512 (5.4 at the 64 images export
verifies on); the 5 % and 95 % quantiles by about 1. 512 images of the shipped model take about 5 s on one core.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented

from export.sessions import make_session
from service.contract import ATTENTION, INPUT, LOGITS, MONITORING_KEY, QUANTILES, MonitoringReference, figures_of

log = logging.getLogger(__name__)

IMAGES = 512  # the default count (ExportOptions.monitoring_images)
BATCH = 8


def reference(proto: onnx.ModelProto, images: np.ndarray, threads: int = 1) -> MonitoringReference:
    """The quantiles of each figure the model has, over ``images`` [N, 3, S, S] run through ``proto`` on the CPU."""
    session = make_session(proto, threads)
    present = {output.name for output in session.get_outputs()}
    names = [name for name in (LOGITS, ATTENTION) if name in present]
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), BATCH):
        outputs = dict(zip(names, session.run(names, {INPUT: images[start : start + BATCH]}), strict=True))
        for name, values in figures_of(outputs[LOGITS], outputs.get(ATTENTION)).items():
            parts.setdefault(name, []).append(values)
    figures = {
        name: tuple(round(float(q), 6) for q in np.quantile(np.concatenate(values).astype(np.float64), QUANTILES))
        for name, values in parts.items()
    }
    return MonitoringReference(len(images), QUANTILES, figures)


def describe(proto: onnx.ModelProto, images: np.ndarray, threads: int = 1) -> dict[str, str]:
    """Metadata property ``monitoring`` for ``proto``; none where the CPU has no kernels for the graph (an fp16 one
    on some builds of ONNX Runtime), so that the service reports the live figures without a band."""
    try:
        recorded = reference(proto, images, threads)
    except OrtNotImplemented as error:
        log.warning("the CPU cannot run this graph (%s); the file records no validation quantiles", error)
        return {}
    summary = ", ".join(f"{name} {values[QUANTILES.index(0.5)]:.3f}" for name, values in recorded.figures.items())
    log.info("medians on %d validation images: %s", recorded.images, summary)
    return {MONITORING_KEY: json.dumps(recorded.to_dict())}
