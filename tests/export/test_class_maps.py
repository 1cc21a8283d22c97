"""The exported ``class_maps`` output: exact decomposition of the logits, checked by export, kept float in int8."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from export.graph import export_graph
from export.pipeline import ExportReport
from export.samples import load_samples
from export.sessions import make_session, run_batches
from export.verify import FP32, VerificationError, allowed_error, check_parity, reference_outputs
from service.contract import CLASS_MAPS, output_spec
from training.checkpoint import Checkpoint


def _head_constant(state: dict) -> np.ndarray:
    """The ResNet head's constant term: the classifier's bias (what no position contributes)."""
    return state.build_model().backbone.classifier.bias.detach().numpy()


def test_class_maps_add_up_to_the_logits_in_onnx_runtime(ca_export: ExportReport, tiny_state: Checkpoint) -> None:
    session = make_session(onnx.load(str(ca_export.path)))
    outputs = run_batches(session, load_samples(tiny_state, "val", 16).images, 8)
    maps, logits = outputs[CLASS_MAPS], outputs["logits"]
    assert maps.shape == (16, len(tiny_state.classes), 2, 2)
    allowed, _ = allowed_error("logits", FP32, {"logits": logits})
    gap = np.abs(maps.sum(axis=(2, 3)) + _head_constant(tiny_state) - logits).max()
    assert gap <= allowed
    # Not trivially so: the positions really differ, and each map is its class's attention-weighted evidence.
    assert np.abs(maps - maps.mean(axis=(2, 3), keepdims=True)).max() > 1e-3


def test_class_maps_match_pytorch_and_export_reports_it(ca_export: ExportReport, tiny_state: Checkpoint) -> None:
    images = load_samples(tiny_state, "val", 8).images
    model = tiny_state.build_model()
    with torch.no_grad():
        expected, _ = model.class_maps(torch.from_numpy(images))
    (maps,) = make_session(onnx.load(str(ca_export.path))).run([CLASS_MAPS], {"image": images})
    np.testing.assert_allclose(maps, expected.numpy(), rtol=0, atol=1e-4 * max(1.0, float(np.abs(maps).max())))
    for parity in ca_export.parity:
        assert parity.errors[CLASS_MAPS] <= output_spec(CLASS_MAPS).tolerance.fp32 * parity.scales["logits"]
        assert parity.scales[CLASS_MAPS] == parity.scales["logits"]  # held to the logits' scale


def test_wrong_class_maps_are_refused(tiny_state: Checkpoint) -> None:
    model = tiny_state.build_model()
    proto = export_graph(model, "ca", 64)
    head = next(init for init in proto.graph.initializer if init.name == "class_head.weight")
    head.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(head) * 1.02, head.name))
    images = load_samples(tiny_state, "val", 8).images
    reference = reference_outputs(model, images, "ca")
    with pytest.raises(VerificationError, match="class maps differ from PyTorch's"):
        check_parity(make_session(proto), reference, images)


def test_int8_keeps_the_class_maps_float_and_exact(int8_export: ExportReport, tiny_state: Checkpoint) -> None:
    proto = onnx.load(str(int8_export.path))
    producers = {output: node for node in proto.graph.node for output in node.output}
    assert producers[CLASS_MAPS].op_type not in ("DequantizeLinear", "QuantizeLinear")
    outputs = run_batches(make_session(proto), load_samples(tiny_state, "val", 8).images, 8)
    allowed, _ = allowed_error("logits", FP32, outputs)
    gap = np.abs(outputs[CLASS_MAPS].sum(axis=(2, 3)) + _head_constant(tiny_state) - outputs["logits"]).max()
    assert gap <= allowed
