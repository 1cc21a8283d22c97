"""Checks an exported graph before it is written: structure, then ONNX Runtime against PyTorch.

Tolerances scale with the outputs (``FP32``): logits within 1e-4 of the logits' scale (the largest absolute
logit, at least 1), attention within 1e-4 of its scale (the largest weight of the maps). Correct float32
kernels add in different orders on different CPUs, and the differences grow with the values; the margin
between that rounding and these tolerances is measured by ``python -m export.parity`` (docs/onnx-model.md),
while a real error (one convolution's weights off by 1 %) exceeds them many times. Both are checked at batch 1 and at
batch 8 on real images of the data set, so a graph whose batch axis is wrongly wired fails too.
Class maps are held to the logits' tolerance, cell by cell and in their sums (plus the head's constant),
since each map is one logit spread over the grid.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export.sessions import run_batches
from service.contract import ATTENTION, CLASS_MAPS, INPUT, LOGITS, output_names
from training.model import CAStreamNet

log = logging.getLogger(__name__)

BATCH_SIZES = (1, 8)
SINGLE_IMAGES = 8  # images checked one at a time (batch 1); batch 8 covers all of them
SUM_TOLERANCE = 1e-4  # |sum of an attention map - 1|


class VerificationError(RuntimeError):
    """An exported graph failed a check; the message says which and by how much."""


@dataclass(frozen=True)
class Tolerance:
    """Allowed differences to PyTorch: ``logits`` relative to the logit scale, ``attention`` to the largest weight."""

    logits: float
    attention: float


FP32 = Tolerance(logits=1e-4, attention=1e-4)
# Half-precision convolutions keep ~3 significant digits; the stream itself stays float32.
FP16 = Tolerance(logits=2e-2, attention=1e-2)


@dataclass(frozen=True)
class Parity:
    """Largest differences to PyTorch over ``images`` images run ``batch_size`` at a time."""

    batch_size: int
    images: int
    logits_error: float
    logits_scale: float
    attention_error: float | None
    class_maps_error: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dims(value: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in value.type.tensor_type.shape.dim]


def check_structure(proto: onnx.ModelProto, pooling: str, num_classes: int, image_size: int) -> None:
    """onnx.checker (full), names and float32 types, shapes, and one symbolic batch axis shared by all."""
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise VerificationError(f"onnx.checker rejects the graph: {error}") from error
    inputs = [value for value in proto.graph.input if value.name not in {i.name for i in proto.graph.initializer}]
    if [value.name for value in inputs] != [INPUT]:
        raise VerificationError(f"graph inputs are {[v.name for v in inputs]}; expected [{INPUT!r}]")
    expected = list(output_names(pooling))
    if [value.name for value in proto.graph.output] != expected:
        raise VerificationError(
            f"graph outputs are {[v.name for v in proto.graph.output]}; expected {expected} for {pooling}"
        )
    shapes = {value.name: _dims(value) for value in (*inputs, *proto.graph.output)}
    for value in (*inputs, *proto.graph.output):
        if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise VerificationError(
                f"{value.name!r} has element type {value.type.tensor_type.elem_type}; expected float32 (1)"
            )
    batch = shapes[INPUT][0] if shapes[INPUT] else None
    if not isinstance(batch, str) or batch == "?":
        raise VerificationError(f"the batch axis of {INPUT!r} is not symbolic: shape {shapes[INPUT]}")
    wanted = {INPUT: [batch, 3, image_size, image_size], LOGITS: [batch, num_classes]}
    for name, shape in shapes.items():
        if name in wanted and shape != wanted[name]:
            raise VerificationError(f"{name!r} has shape {shape}; expected {wanted[name]}")
    if ATTENTION in shapes and (len(shapes[ATTENTION]) != 3 or shapes[ATTENTION][0] != batch):
        raise VerificationError(f"{ATTENTION!r} has shape {shapes[ATTENTION]}; expected [{batch}, h, w]")
    maps = shapes.get(CLASS_MAPS)
    if maps is not None and (len(maps) != 4 or maps[:2] != [batch, num_classes]):
        raise VerificationError(f"{CLASS_MAPS!r} has shape {maps}; expected [{batch}, {num_classes}, h, w]")


def check_attention_maps(attention: np.ndarray) -> None:
    """Attention maps (N, h, w) are non-negative and each sums to 1."""
    if not np.isfinite(attention).all():
        raise VerificationError("attention maps hold NaN or infinite values")
    if attention.min() < 0:
        raise VerificationError(f"attention maps hold negative weights (minimum {attention.min():.3g})")
    deviation = float(np.abs(attention.reshape(len(attention), -1).sum(axis=1) - 1).max())
    if deviation > SUM_TOLERANCE:
        raise VerificationError(f"attention maps sum to 1 +- {deviation:.3g}; allowed {SUM_TOLERANCE:g}")


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Runs the block with ``count`` PyTorch CPU threads (0: leave the setting alone)."""
    previous = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.no_grad()
def reference_outputs(
    model: CAStreamNet, images: np.ndarray, pooling: str, batch_size: int = 8, threads: int = 1
) -> dict[str, np.ndarray]:
    """PyTorch's float32 outputs for ``images``, by output name.

    One thread by default: the reference is a few dozen images, and OpenMP threads that compete with
    other processes for the cores can be many times slower than one.
    """
    model = model.float().cpu().eval()
    logits, attention, maps = [], [], []
    with torch_threads(threads):
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(images[start : start + batch_size])
            output = model(batch, pooling)
            logits.append(output.logits.numpy())
            if output.attention is not None:
                attention.append(output.attention.numpy())
            if CLASS_MAPS in output_names(pooling):
                maps.append(model.class_maps(batch)[0].numpy())
    outputs = {LOGITS: np.concatenate(logits)}
    if attention:
        outputs[ATTENTION] = np.concatenate(attention)
    if maps:
        outputs[CLASS_MAPS] = np.concatenate(maps)
    return outputs


def attention_scale(expected_attention: np.ndarray) -> float:
    """The scale attention errors are measured against: the largest weight of the maps (at most 1)."""
    return float(expected_attention.max()) if expected_attention.size else 1.0


def relative_errors(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, float]:
    """Largest difference of each output to ``reference``, over its scale (logits' for logits and class maps)."""
    count = len(outputs[LOGITS])
    logit_scale = max(1.0, float(np.abs(reference[LOGITS][:count]).max()))
    errors = {LOGITS: float(np.abs(outputs[LOGITS] - reference[LOGITS][:count]).max()) / logit_scale}
    if ATTENTION in outputs:
        wanted = reference[ATTENTION][:count]
        errors[ATTENTION] = float(np.abs(outputs[ATTENTION] - wanted).max()) / attention_scale(wanted)
    if CLASS_MAPS in outputs:
        errors[CLASS_MAPS] = float(np.abs(outputs[CLASS_MAPS] - reference[CLASS_MAPS][:count]).max()) / logit_scale
    return errors


def allowed_logit_error(tolerance: Tolerance, expected_logits: np.ndarray) -> tuple[float, float]:
    """``(allowed, scale)``: the largest difference allowed in logit units for ``expected_logits``, and its scale."""
    scale = max(1.0, float(np.abs(expected_logits).max()))
    return tolerance.logits * scale, scale


def check_class_maps(
    maps: np.ndarray,
    logits: np.ndarray,
    reference: dict[str, np.ndarray],
    tolerance: Tolerance,
    batch_size: int,
) -> float:
    """Class maps (N, K, h, w) against PyTorch's, and their sums plus the head's constant against ``logits``.

    Both in logit units, within the logits' tolerance; returns the largest difference to PyTorch.
    """
    count = len(maps)
    wanted, expected_logits = reference[CLASS_MAPS][:count], reference[LOGITS][:count]
    if maps.shape != wanted.shape:
        raise VerificationError(f"class maps have shape {maps.shape} at batch {batch_size}; expected {wanted.shape}")
    allowed, scale = allowed_logit_error(tolerance, expected_logits)
    error = float(np.abs(maps - wanted).max())
    if not error <= allowed:
        raise VerificationError(
            f"ONNX Runtime class maps differ from PyTorch's by {error:.3g} at batch {batch_size}; "
            f"allowed {allowed:.3g} ({tolerance.logits:g} of the logit scale {scale:.3g})"
        )
    constant = expected_logits - wanted.sum(axis=(2, 3))  # the head's bias term, per class
    gap = float(np.abs(maps.sum(axis=(2, 3)) + constant - logits).max())
    if not gap <= allowed:
        raise VerificationError(
            f"ONNX Runtime class maps plus the head's constant miss its logits by {gap:.3g} at batch {batch_size}; "
            f"allowed {allowed:.3g}"
        )
    return error


def check_parity(
    session: ort.InferenceSession,
    reference: dict[str, np.ndarray],
    images: np.ndarray,
    tolerance: Tolerance = FP32,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
) -> list[Parity]:
    """ONNX Runtime against ``reference`` at each batch size; raises :class:`VerificationError` beyond ``tolerance``."""
    results = []
    for batch_size in batch_sizes:
        count = len(images) if batch_size > 1 else min(len(images), SINGLE_IMAGES)
        outputs = run_batches(session, images[:count], batch_size)
        if set(outputs) != set(reference):
            raise VerificationError(
                f"ONNX Runtime returned outputs {sorted(outputs)}; PyTorch returned {sorted(reference)}"
            )
        expected = reference[LOGITS][:count]
        if outputs[LOGITS].shape != expected.shape:
            raise VerificationError(
                f"logits have shape {outputs[LOGITS].shape} at batch {batch_size}; expected {expected.shape}"
            )
        allowed, scale = allowed_logit_error(tolerance, expected)
        error = float(np.abs(outputs[LOGITS] - expected).max())
        if not error <= allowed:  # also catches NaN
            raise VerificationError(
                f"ONNX Runtime logits differ from PyTorch's by {error:.3g} at batch {batch_size} "
                f"({error / scale:.3g} of their scale {scale:.3g}); allowed {tolerance.logits:g} of the scale"
            )
        attention_error = None
        if ATTENTION in reference:
            maps, wanted = outputs[ATTENTION], reference[ATTENTION][:count]
            if maps.shape != wanted.shape:
                raise VerificationError(
                    f"attention has shape {maps.shape} at batch {batch_size}; expected {wanted.shape}"
                )
            check_attention_maps(maps)
            attention_error = float(np.abs(maps - wanted).max())
            peak = attention_scale(wanted)
            if not attention_error <= tolerance.attention * peak:
                raise VerificationError(
                    f"ONNX Runtime attention differs from PyTorch's by {attention_error:.3g} at batch {batch_size} "
                    f"({attention_error / peak:.3g} of the largest weight {peak:.3g}); "
                    f"allowed {tolerance.attention:g} of it"
                )
        maps_error = None
        if CLASS_MAPS in reference:
            maps_error = check_class_maps(outputs[CLASS_MAPS], outputs[LOGITS], reference, tolerance, batch_size)
        results.append(Parity(batch_size, count, error, scale, attention_error, maps_error))
        log.info(
            "batch %d, %d images: logits within %.2g (scale %.3g), attention within %s",
            batch_size,
            count,
            error,
            scale,
            "-" if attention_error is None else f"{attention_error:.2g}",
        )
    return results
