"""Graph passes: the attention rewrite, the stream's node set, fp16 conversion, structural checks."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from export.fp16 import check_fp16_structure, convert_fp16
from export.graph import stream_nodes, toposort
from export.pipeline import ExportReport
from export.rewrite import attention_as_matmul, canonical, fold_linear_chains
from export.samples import load_samples
from export.sessions import make_session, run_batches
from export.verify import FP16, VerificationError, check_attention_maps, check_parity, check_structure
from training.checkpoint import Checkpoint


def _einsum_graph(transposed: bool) -> onnx.ModelProto:
    """scores = einsum(features, token); pooled = einsum(softmax(scores), features), features (N, P, C)."""
    nodes = []
    features = "features"
    if transposed:  # the model's layout: (N, C, P) transposed to (N, P, C)
        nodes.append(helper.make_node("Transpose", ["maps"], ["features"], perm=[0, 2, 1], name="t"))
    nodes += [
        helper.make_node("Einsum", [features, "token"], ["scores"], equation="npc,nc->np", name="e1"),
        helper.make_node("Softmax", ["scores"], ["weights"], axis=1, name="s"),
        helper.make_node("Einsum", ["weights", features], ["pooled"], equation="np,npc->nc", name="e2"),
    ]
    first = helper.make_tensor_value_info(
        "maps" if transposed else "features", TensorProto.FLOAT, ["N", 3, 5] if transposed else ["N", 5, 3]
    )
    inputs = [first, helper.make_tensor_value_info("token", TensorProto.FLOAT, ["N", 3])]
    outputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", d]) for n, d in (("weights", 5), ("pooled", 3))
    ]
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)


@pytest.mark.parametrize("transposed", [True, False])
def test_attention_rewrite_is_exact_and_removes_einsum(transposed: bool) -> None:
    proto = _einsum_graph(transposed)
    rng = np.random.default_rng(0)
    feed = {
        "maps" if transposed else "features": rng.standard_normal((4, 3, 5) if transposed else (4, 5, 3), np.float32),
        "token": rng.standard_normal((4, 3), np.float32),
    }
    before = make_session(proto).run(None, feed)
    assert attention_as_matmul(proto.graph) == 2
    onnx.checker.check_model(proto, full_check=True)
    ops = [node.op_type for node in proto.graph.node]
    assert "Einsum" not in ops and ops.count("MatMul") == 2
    assert ("Transpose" in ops) is False  # dead after the rewrite, or never there
    after = make_session(proto).run(None, feed)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_other_einsums_are_left_alone() -> None:
    assert canonical("npc,nc->np") == "abc,ac->ab" and canonical("bij, bjk -> bik") == "abc,acd->abd"
    node = helper.make_node("Einsum", ["a", "b"], ["c"], equation="bij,bjk->bik")
    graph = helper.make_graph([node], "g", [], [])
    assert attention_as_matmul(graph) == 0 and graph.node[0].op_type == "Einsum"


def _linear_chain(extra_reader: bool) -> onnx.ModelProto:
    """x (N, 4) -> Gemm (transB, bias) -> Gemm (no transB, no bias) -> y (N, 2)."""
    rng = np.random.default_rng(1)
    inits = [
        onnx.numpy_helper.from_array(rng.standard_normal((3, 4), np.float32), "w1"),  # (out, in): transB
        onnx.numpy_helper.from_array(rng.standard_normal(3, np.float32), "c1"),
        onnx.numpy_helper.from_array(rng.standard_normal((3, 2), np.float32), "w2"),  # (in, out)
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "c1"], ["h"], transB=1, name="first"),
        helper.make_node("Gemm", ["h", "w2"], ["y"], name="second"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["h"], ["r"], name="other"))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, ["N", 3]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])], outputs, inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)


def test_consecutive_linear_layers_fold_into_one() -> None:
    proto = _linear_chain(extra_reader=False)
    x = np.random.default_rng(2).standard_normal((5, 4), np.float32)
    (before,) = make_session(proto).run(None, {"x": x})
    assert fold_linear_chains(proto.graph) == 1
    onnx.checker.check_model(proto, full_check=True)
    assert [node.op_type for node in proto.graph.node] == ["Gemm"]
    assert {init.name for init in proto.graph.initializer} == {"second_folded_weight", "second_folded_bias"}
    (after,) = make_session(proto).run(None, {"x": x})
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


def test_a_linear_layer_read_elsewhere_is_not_folded() -> None:
    proto = _linear_chain(extra_reader=True)
    assert fold_linear_chains(proto.graph) == 0
    assert [node.name for node in proto.graph.node] == ["first", "second", "other"]


def test_stream_nodes_cover_the_attention_and_nothing_of_the_backbone(
    ca_export: ExportReport, gap_export: ExportReport
) -> None:
    graph = onnx.load(str(ca_export.path)).graph
    names = set(stream_nodes(graph))
    kinds = {node.op_type for node in graph.node if node.name in names}
    assert {"Softmax", "MatMul", "Gemm"} <= kinds and "Conv" not in kinds
    assert sum(node.op_type == "Softmax" for node in graph.node if node.name in names) == 5
    # GAP: the class activation maps' nodes alone, none of them before the last feature map.
    gap = onnx.load(str(gap_export.path)).graph
    kinds = {node.op_type for node in gap.node if node.name in set(stream_nodes(gap))}
    assert "MatMul" in kinds and not kinds & {"Conv", "Softmax"}


def test_toposort_orders_appended_nodes() -> None:
    nodes = [
        helper.make_node("Relu", ["b"], ["c"], name="second"),
        helper.make_node("Relu", ["a"], ["b"], name="first"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])], [])
    toposort(graph)
    assert [node.name for node in graph.node] == ["first", "second"]
    graph.node[0].input[0] = "missing"
    with pytest.raises(ValueError, match="missing"):
        toposort(graph)


def test_fp16_graph_keeps_the_stream_float32_and_matches_pytorch(
    ca_export: ExportReport, tiny_state: Checkpoint
) -> None:
    fp32 = onnx.load(str(ca_export.path))
    half = convert_fp16(fp32)
    check_structure(half, "ca", len(tiny_state.classes), 64)
    check_fp16_structure(half)
    stream_params = [i for i in half.graph.initializer if i.name.startswith("model.stream.")]
    assert stream_params and all(i.data_type == TensorProto.FLOAT for i in stream_params)
    images = load_samples(tiny_state, "val", 16).images
    reference = run_batches(make_session(fp32), images, 8)
    parity = check_parity(make_session(half), reference, images, FP16)
    assert [p.batch_size for p in parity] == [1, 8]
    assert fp32.graph.initializer[0].data_type == TensorProto.FLOAT  # the source graph is untouched


def test_fp16_structure_check_refuses_float32_convolutions(ca_export: ExportReport) -> None:
    with pytest.raises(VerificationError, match="non-float16 weights"):
        check_fp16_structure(onnx.load(str(ca_export.path)))


def test_attention_map_checks() -> None:
    good = np.full((2, 2, 2), 0.25, dtype=np.float32)
    check_attention_maps(good)
    negative = good.copy()
    negative[0, 0, :] = [-0.1, 0.6]  # still sums to 1
    with pytest.raises(VerificationError, match="negative"):
        check_attention_maps(negative)
    with pytest.raises(VerificationError, match="sum to 1"):
        check_attention_maps(good * 1.01)
    with pytest.raises(VerificationError, match="NaN"):
        check_attention_maps(good * np.nan)
