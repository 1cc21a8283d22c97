"""int8 static quantisation for CPU serving, with the attention stream left in float32.

ONNX Runtime's QDQ format with per-channel int8 weights and uint8 activations (the combination its x86
kernels are fastest at), calibrated with min/max ranges on training images. The CA stream and the head
after it are excluded: they are ~0.25 % of the compute, and keeping them float keeps the attention
softmax, and so the ``attention`` output, exactly as trained, computed from the quantised backbone's
features. So are the nodes that make or read an output the contract's table keeps float in int8 (a GAP
graph, the head after its pooling).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from export.graph import stream_nodes
from service.contract import INPUT, OUTPUTS

log = logging.getLogger(__name__)


class _Batches(CalibrationDataReader):
    """Feeds calibration images to ONNX Runtime's calibrator, ``batch_size`` at a time."""

    def __init__(self, images: np.ndarray, batch_size: int) -> None:
        self._batches: Iterator[np.ndarray] = (images[i : i + batch_size] for i in range(0, len(images), batch_size))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT: batch}


def quantize_int8(proto: onnx.ModelProto, calibration: np.ndarray, batch_size: int = 8) -> onnx.ModelProto:
    """The int8 version of a float32 graph, calibrated on ``calibration`` images (N, 3, S, S).

    Inputs and outputs stay float32; metadata properties are not carried over (attach them afterwards).
    """
    if len(calibration) == 0:
        raise ValueError("int8 calibration needs at least one image, got none")
    with tempfile.TemporaryDirectory(prefix="castream-int8-") as folder:
        source, prepared, target = (Path(folder) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save(proto, str(source))
        # Shape inference and constant folding first, as ONNX Runtime recommends before quantising.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
        excluded = float_nodes(onnx.load(str(prepared)).graph)
        log.info("calibrating int8 ranges on %d images; %d stream nodes stay float", len(calibration), len(excluded))
        quantize_static(
            str(prepared),
            str(target),
            _Batches(calibration, batch_size),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.MinMax,
        )
        quantized = onnx.load(str(target))
    _drop_unused_opsets(quantized)
    return quantized


def float_nodes(graph: onnx.GraphProto) -> list[str]:
    """Nodes that quantisation leaves in float32: the CA stream, and those that make or read an output the
    contract's table keeps float in int8 (so that no quantise-dequantise pair lands on that output)."""
    kept = {spec.name for spec in OUTPUTS if spec.float_in_int8}
    names = stream_nodes(graph)
    touching = [node.name for node in graph.node if kept & {*node.input, *node.output}]
    return list(dict.fromkeys([*names, *touching]))


def _drop_unused_opsets(proto: onnx.ModelProto) -> None:
    """Keeps only the operator sets the nodes use (the pre-processing step declares all of ONNX Runtime's)."""
    used = {node.domain for node in proto.graph.node} | {""}
    kept = [opset for opset in proto.opset_import if opset.domain in used or opset.domain == "ai.onnx"]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)


def is_quantized(proto: onnx.ModelProto) -> bool:
    """Whether the graph holds quantised operators (QDQ pairs or fused QLinear ones)."""
    return any(
        node.op_type in ("QuantizeLinear", "DequantizeLinear") or node.op_type.startswith("QLinear")
        for node in proto.graph.node
    )
