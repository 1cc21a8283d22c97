"""Checks an exported graph before it is written: structure, then ONNX Runtime against PyTorch.

Every output of the contract's table (``service.contract.OUTPUTS``) is checked the same way: its name, type and
shape rule, then its largest difference to PyTorch against its tolerance, a fraction of its scale (logits and
class maps: the largest absolute logit, at least 1; attention: the largest weight of the maps; 1e-4 each in
float32). Correct float32 kernels add in different orders on different CPUs, and the differences grow with the
values; the margin between that rounding and these tolerances is measured by ``python -m export.parity``
(docs/onnx-model.md), while a real error (one convolution's weights off by 1 %) exceeds them many times. All are
checked at batch 1 and at batch 8 on real images of the data set, so a graph whose batch axis is wrongly wired
fails too. Some outputs have properties of their own, checked beside (``PROPERTIES``): attention maps are
non-negative and sum to 1; class maps plus the head's constant add up to the graph's own logits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export.sessions import run_batches
from service.contract import ATTENTION, BATCH, CLASS_MAPS, INPUT, LOGITS, OUTPUT_NAMES, output_names, output_spec
from training.model import CAStreamNet

log = logging.getLogger(__name__)

BATCH_SIZES = (1, 8)
SINGLE_IMAGES = 8  # images checked one at a time (batch 1); batch 8 covers all of them
SUM_TOLERANCE = 1e-4  # |sum of an attention map - 1|
# The numeric formats checked against PyTorch, each with its column of the table's tolerances. Half-precision
# convolutions keep ~3 significant digits; the stream itself stays float32.
FP32, FP16 = "fp32", "fp16"


class VerificationError(RuntimeError):
    """An exported graph failed a check; the message says which and by how much."""


def tolerances(numerics: str, names: Iterable[str]) -> dict[str, float]:
    """The table's tolerance of each output in ``names`` for ``numerics``: a fraction of the output's scale."""
    return {name: output_spec(name).tolerance.fraction(numerics) for name in names}


def scale_of(name: str, reference: dict[str, np.ndarray]) -> float:
    """The scale the errors of output ``name`` are measured against, from PyTorch's ``reference`` outputs."""
    tolerance = output_spec(name).tolerance
    values = reference[tolerance.scale]
    scale = max(tolerance.floor, float(np.abs(values).max()) if values.size else 0.0)
    return scale if scale > 0 else 1.0  # all zero: differences count as they are


def allowed_error(name: str, numerics: str, reference: dict[str, np.ndarray]) -> tuple[float, float]:
    """``(allowed, scale)``: the largest difference allowed for output ``name``, in its own units, and its scale."""
    scale = scale_of(name, reference)
    return output_spec(name).tolerance.fraction(numerics) * scale, scale


@dataclass(frozen=True)
class Parity:
    """Largest differences to PyTorch over ``images`` images run ``batch_size`` at a time, by output name, and the
    scale each was measured against."""

    batch_size: int
    images: int
    errors: dict[str, float] = field(default_factory=dict)
    scales: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dims(value: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in value.type.tensor_type.shape.dim]


def check_structure(proto: onnx.ModelProto, pooling: str, num_classes: int, image_size: int) -> None:
    """onnx.checker (full), names and types, shapes by the table's rules, and one symbolic batch axis shared by all."""
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
    wanted_types = {INPUT: onnx.TensorProto.FLOAT} | {
        name: onnx.helper.np_dtype_to_tensor_dtype(np.dtype(output_spec(name).dtype)) for name in expected
    }
    for value in (*inputs, *proto.graph.output):
        if value.type.tensor_type.elem_type != wanted_types[value.name]:
            raise VerificationError(
                f"{value.name!r} has element type {value.type.tensor_type.elem_type}; "
                f"expected {wanted_types[value.name]} ({onnx.TensorProto.DataType.Name(wanted_types[value.name])})"
            )
    shape = _dims(inputs[0])
    batch = shape[0] if shape else None
    if not isinstance(batch, str) or batch == "?":
        raise VerificationError(f"the batch axis of {INPUT!r} is not symbolic: shape {shape}")
    if shape != [batch, 3, image_size, image_size]:
        raise VerificationError(f"{INPUT!r} has shape {shape}; expected {[batch, 3, image_size, image_size]}")
    # Each symbolic dimension of the table takes one size, shared by every output that has it.
    sizes: dict[str, str | int] = {BATCH: batch, "classes": num_classes}
    for value in proto.graph.output:
        rule, dims = output_spec(value.name).shape, _dims(value)
        if len(dims) != len(rule) or any(sizes.setdefault(s, d) != d for s, d in zip(rule, dims, strict=True)):
            wanted = ", ".join(str(sizes.get(symbol, symbol)) for symbol in rule)
            raise VerificationError(f"{value.name!r} has shape {dims}; expected [{wanted}]")


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
    """PyTorch's float32 outputs for ``images``, by output name (every output of ``pooling``'s graph).

    One thread by default: the reference is a few dozen images, and OpenMP threads that compete with
    other processes for the cores can be many times slower than one.
    """
    model = model.float().cpu().eval()
    parts: dict[str, list[np.ndarray]] = {}
    with torch_threads(threads):
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(images[start : start + batch_size])
            for name, value in model.graph_outputs(batch, pooling).items():
                parts.setdefault(name, []).append(value.numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


def relative_errors(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, float]:
    """Largest difference of each output to ``reference``, over its scale, in the table's order."""
    count = len(next(iter(outputs.values())))
    head = {name: values[:count] for name, values in reference.items()}
    names = [name for name in OUTPUT_NAMES if name in outputs and name in reference]
    return {name: float(np.abs(outputs[name] - head[name]).max()) / scale_of(name, head) for name in names}


def _label(name: str) -> str:
    """An output's name in a sentence: ``class_maps`` -> ``class maps differ``, ``attention`` -> ``... differs``."""
    return name.replace("_", " ") + (" differ" if name.endswith("s") else " differs")


def check_output(
    name: str, outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], numerics: str, batch_size: int
) -> float:
    """Output ``name`` of ONNX Runtime against PyTorch's, within the table's tolerance; returns the largest error."""
    actual, wanted = outputs[name], reference[name]
    if actual.shape != wanted.shape:
        raise VerificationError(f"{name} has shape {actual.shape} at batch {batch_size}; expected {wanted.shape}")
    allowed, scale = allowed_error(name, numerics, reference)
    error = float(np.abs(actual - wanted).max())
    if not error <= allowed:  # also catches NaN
        tolerance = output_spec(name).tolerance
        raise VerificationError(
            f"ONNX Runtime {_label(name)} from PyTorch's by {error:.3g} at batch {batch_size} ({error / scale:.3g} "
            f"of {tolerance.words}, {scale:.3g}); allowed {tolerance.fraction(numerics):g} of the scale"
        )
    return error


def check_class_map_sums(
    outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], numerics: str, batch_size: int
) -> None:
    """Class maps (N, K, h, w) plus the head's constant add up to the graph's own logits, within their tolerance."""
    maps, logits, wanted = outputs[CLASS_MAPS], outputs[LOGITS], reference[CLASS_MAPS]
    allowed, _ = allowed_error(CLASS_MAPS, numerics, reference)
    constant = reference[LOGITS] - wanted.sum(axis=(2, 3))  # the head's bias term, per class
    gap = float(np.abs(maps.sum(axis=(2, 3)) + constant - logits).max())
    if not gap <= allowed:
        raise VerificationError(
            f"ONNX Runtime class maps plus the head's constant miss its logits by {gap:.3g} at batch {batch_size}; "
            f"allowed {allowed:.3g}"
        )


# Properties of single outputs, checked on ONNX Runtime's values beside their tolerance.
PROPERTIES: dict[str, Callable[[dict[str, np.ndarray], dict[str, np.ndarray], str, int], None]] = {
    ATTENTION: lambda outputs, reference, numerics, batch_size: check_attention_maps(outputs[ATTENTION]),
    CLASS_MAPS: check_class_map_sums,
}


def check_parity(
    session: ort.InferenceSession,
    reference: dict[str, np.ndarray],
    images: np.ndarray,
    numerics: str = FP32,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
) -> list[Parity]:
    """ONNX Runtime against ``reference`` at each batch size, every output within the table's tolerance for
    ``numerics``; raises :class:`VerificationError` naming the output, the difference and the bound."""
    results = []
    names = [name for name in OUTPUT_NAMES if name in reference]
    for batch_size in batch_sizes:
        count = len(images) if batch_size > 1 else min(len(images), SINGLE_IMAGES)
        outputs = run_batches(session, images[:count], batch_size)
        if set(outputs) != set(reference):
            raise VerificationError(
                f"ONNX Runtime returned outputs {sorted(outputs)}; PyTorch returned {sorted(reference)}"
            )
        expected = {name: values[:count] for name, values in reference.items()}
        errors, scales = {}, {}
        for name in names:
            errors[name] = check_output(name, outputs, expected, numerics, batch_size)
            scales[name] = scale_of(name, expected)
            if name in PROPERTIES:
                PROPERTIES[name](outputs, expected, numerics, batch_size)
        results.append(Parity(batch_size, count, errors, scales))
        within = ", ".join(f"{name} within {error:.2g} (scale {scales[name]:.3g})" for name, error in errors.items())
        log.info("batch %d, %d images: %s", batch_size, count, within)
    return results
