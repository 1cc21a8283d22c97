"""int8 export: quantised backbone, float attention, agreement measured and enforced."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from export import agreement, metadata
from export.agreement import Agreement, Thresholds
from export.pipeline import ExportReport
from export.quantize import is_quantized
from export.samples import load_samples
from export.sessions import make_session
from export.verify import VerificationError
from service.contract import output_names
from tests.export.conftest import TINY_INT8
from training.checkpoint import Checkpoint


def test_int8_graph_is_quantised_and_keeps_float_io(int8_export: ExportReport) -> None:
    proto = onnx.load(str(int8_export.path))
    assert is_quantized(proto)
    assert [opset.domain for opset in proto.opset_import] == [""]  # standard operators only
    assert sum(node.op_type == "QuantizeLinear" for node in proto.graph.node) > 10
    types = {value.name: value.type.tensor_type.elem_type for value in (*proto.graph.input, *proto.graph.output)}
    assert types == dict.fromkeys(["image", *output_names("ca")], onnx.TensorProto.FLOAT)


def test_int8_attention_softmax_reads_float_scores(int8_export: ExportReport) -> None:
    graph = onnx.load(str(int8_export.path)).graph
    producers = {output: node for node in graph.node for output in node.output}
    softmaxes = [node for node in graph.node if node.op_type == "Softmax"]
    assert len(softmaxes) == 5
    for node in softmaxes:  # no dequantised (int8-rounded) scores feed the attention
        assert producers[node.input[0]].op_type not in ("DequantizeLinear", "QuantizeLinear")
        consumers = [n.op_type for n in graph.node if node.output[0] in n.input]
        assert "QuantizeLinear" not in consumers


def test_int8_outputs_are_valid_attention_maps(int8_export: ExportReport, tiny_state: Checkpoint) -> None:
    session = make_session(onnx.load(str(int8_export.path)))
    logits, attention = session.run(["logits", "attention"], {"image": load_samples(tiny_state, "val", 8).images})
    assert logits.shape == (8, len(tiny_state.classes)) and np.isfinite(logits).all()
    assert attention.dtype == np.float32 and (attention >= 0).all()
    np.testing.assert_allclose(attention.sum(axis=(1, 2)), 1.0, atol=1e-5)


def test_int8_agreement_is_reported_and_meets_the_thresholds(int8_export: ExportReport) -> None:
    measured = int8_export.agreement
    assert measured is not None and measured.images == 64
    limits = TINY_INT8
    assert measured.top1 >= limits.top1 and measured.peak >= limits.peak and measured.correlation >= limits.correlation
    assert int8_export.speedup is not None and int8_export.speedup > 0
    props = metadata.read(int8_export.path)
    assert props["precision"] == "int8" and props["model_name"] == "castream-resnet18-ca-int8"
    recorded = props["verification"]["int8"]
    assert recorded["top1"] == measured.top1 and recorded["thresholds"]["top1"] == TINY_INT8.top1
    assert recorded["calibration_images"] == 64


def test_agreement_measures_top1_peak_and_correlation() -> None:
    logits = np.eye(4, dtype=np.float32)  # image i predicts class i
    maps = np.zeros((4, 2, 2), dtype=np.float32)
    maps.reshape(4, -1)[np.arange(4), [0, 1, 2, 3]] = 1
    other_logits = logits.copy()
    other_logits[3] = [1, 0, 0, 0]  # one of four predictions changes
    other_maps = maps * 0.9 + 0.025  # same peaks, perfectly correlated
    other_maps[0] = maps[0, ::-1, ::-1]  # one peak moves to the opposite corner
    result = agreement.measure(
        {"logits": logits, "attention": maps},
        {"logits": other_logits, "attention": other_maps},
        labels=np.array([0, 1, 2, 3]),
    )
    assert result.top1 == 0.75 and result.peak == 0.75
    assert result.correlation == pytest.approx((3 + -1 / 3) / 4)
    assert (result.reference_accuracy, result.candidate_accuracy) == (1.0, 0.75)


def test_flat_identical_maps_count_as_correlated() -> None:
    flat = np.full((2, 3, 3), 1 / 9, dtype=np.float32)
    np.testing.assert_allclose(agreement.correlations(flat, flat), [1.0, 1.0])


def test_agreement_below_thresholds_is_refused_with_the_shortfall() -> None:
    measured = Agreement(images=1000, top1=0.985, peak=0.97, correlation=0.90)
    with pytest.raises(VerificationError) as error:
        agreement.check(measured, Thresholds())
    message = str(error.value)
    assert "top1 agreement 0.9850 < 0.99 (short by 0.0050)" in message
    assert "correlation agreement 0.9000 < 0.95" in message
    assert "peak" not in message
    agreement.check(measured, Thresholds(top1=0.98, correlation=0.9))


def test_thresholds_are_validated() -> None:
    with pytest.raises(ValueError, match="top1 threshold must be a fraction"):
        Thresholds(top1=99.0)
