"""Graph rewrites that make the CA stream cheap in ONNX Runtime. Its cost is memory traffic, not arithmetic.

- The CA block's two attention products, written ``einsum("npc,nc->np")`` (scores) and
  ``einsum("np,npc->nc")`` (pooling) over features transposed to (N, P, C), become batched MatMul on the
  untransposed (N, C, P) map: ONNX Runtime's Einsum copies its operands on every call, MatMul reads the
  feature map in place.
- Two Linear layers in a row become one where the first one's output is read by nothing else: at batch 1
  reading a 2048 x 2048 matrix costs more than all the stream's arithmetic. (A ResNet's last stream projection
  and its classifier were such a pair; since the projection's output is the graph's ``embedding``, both run.)

Both are exact up to float rounding; export verification compares the result with PyTorch.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

SCORES = "abc,ac->ab"  # (N, P, C), (N, C) -> (N, P)
POOLING = "ab,abc->ac"  # (N, P), (N, P, C) -> (N, C)
AXIS_1, AXIS_2 = "castream_axis_1", "castream_axis_2"


def canonical(equation: str) -> str:
    """Renames an einsum equation's letters in order of first appearance: ``npc,nc->np`` -> ``abc,ac->ab``."""
    names: dict[str, str] = {}
    out = []
    for char in equation.replace(" ", ""):
        if char.isalpha():
            char = names.setdefault(char, "abcdefghijklmnopqrstuvwxyz"[len(names)])
        out.append(char)
    return "".join(out)


def _equation(node: onnx.NodeProto) -> str | None:
    if node.op_type != "Einsum" or node.domain not in ("", "ai.onnx"):
        return None
    for attribute in node.attribute:
        if attribute.name == "equation":
            return canonical(attribute.s.decode())
    return None


def _untransposed(name: str, producers: dict[str, onnx.NodeProto]) -> str | None:
    """The (N, C, P) tensor that ``name`` is the (0, 2, 1) transpose of, if it is one."""
    node = producers.get(name)
    if node is None or node.op_type != "Transpose":
        return None
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
    return node.input[0] if perm == [0, 2, 1] else None


def _matmul(node: onnx.NodeProto, vector: str, axis: str, left: str, right: str) -> list[onnx.NodeProto]:
    """``Squeeze(MatMul(left, right), axis)`` where ``vector`` is first unsqueezed at ``axis``."""
    lifted, product = f"{node.name}_lifted", f"{node.name}_product"
    left, right = (lifted if left == vector else left), (lifted if right == vector else right)
    return [
        helper.make_node("Unsqueeze", [vector, axis], [lifted], name=f"{node.name}_unsqueeze"),
        helper.make_node("MatMul", [left, right], [product], name=f"{node.name}_matmul"),
        helper.make_node("Squeeze", [product, axis], list(node.output), name=f"{node.name}_squeeze"),
    ]


def _replacement(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> list[onnx.NodeProto] | None:
    equation = _equation(node)
    if equation == SCORES:
        features, token = node.input
        source = _untransposed(features, producers)
        if source is not None:  # (N, 1, C) @ (N, C, P) -> (N, 1, P)
            return _matmul(node, token, AXIS_1, token, source)
        return _matmul(node, token, AXIS_2, features, token)  # (N, P, C) @ (N, C, 1) -> (N, P, 1)
    if equation == POOLING:
        weights, features = node.input
        source = _untransposed(features, producers)
        if source is not None:  # (N, C, P) @ (N, P, 1) -> (N, C, 1)
            return _matmul(node, weights, AXIS_2, source, weights)
        return _matmul(node, weights, AXIS_1, weights, features)  # (N, 1, P) @ (N, P, C) -> (N, 1, C)
    return None


def attention_as_matmul(graph: onnx.GraphProto) -> int:
    """Rewrites the CA blocks' Einsum nodes in place; returns how many were rewritten."""
    producers = {output: node for node in graph.node for output in node.output}
    nodes, rewritten = [], 0
    for node in graph.node:
        replacement = _replacement(node, producers)
        rewritten += replacement is not None
        nodes.extend(replacement or [node])
    if not rewritten:
        return 0
    # Transposes that only fed the rewritten products are dead now.
    read = {name for node in nodes for name in node.input} | {value.name for value in graph.output}
    dead = {n.output[0] for n in nodes if n.op_type == "Transpose" and n.output[0] not in read}
    del graph.node[:]
    graph.node.extend(n for n in nodes if not (n.op_type == "Transpose" and n.output[0] in dead))
    kept = [value for value in graph.value_info if value.name not in dead]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    existing = {init.name for init in graph.initializer}
    for name, axis in ((AXIS_1, 1), (AXIS_2, 2)):
        if name not in existing:
            graph.initializer.append(numpy_helper.from_array(np.array([axis], dtype=np.int64), name))
    return rewritten


def _gemm_parts(
    node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(W, c)`` with the node computing ``x @ W + c``, when it is a plain Gemm on constant weights."""
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    plain = (
        attributes.get("alpha", 1.0) == 1.0 and attributes.get("beta", 1.0) == 1.0 and not attributes.get("transA", 0)
    )
    if node.op_type != "Gemm" or not plain or node.input[1] not in initializers:
        return None
    weight = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64)
    weight = weight.T if attributes.get("transB", 0) else weight
    bias = np.zeros(weight.shape[1])
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in initializers:
            return None
        bias = np.broadcast_to(numpy_helper.to_array(initializers[node.input[2]]).astype(np.float64), bias.shape)
    return weight, bias


def fold_linear_chains(graph: onnx.GraphProto) -> int:
    """Merges ``Gemm(Gemm(x, W1, c1), W2, c2)`` into ``Gemm(x, W1 W2, c1 W2 + c2)``; returns how many."""
    initializers = {init.name: init for init in graph.initializer}
    producers = {output: index for index, node in enumerate(graph.node) for output in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {value.name for value in graph.output}
    touched: set[int] = set()  # nodes already part of a fold: chains of three are folded pairwise at most
    replaced: dict[int, onnx.NodeProto] = {}
    added = []
    for index, second in enumerate(graph.node):
        source = producers.get(second.input[0]) if second.op_type == "Gemm" and second.input else None
        if source is None or {source, index} & touched:
            continue
        first = graph.node[source]
        if readers.get(first.output[0]) != 1 or first.output[0] in outputs:
            continue
        inner, outer = _gemm_parts(first, initializers), _gemm_parts(second, initializers)
        if inner is None or outer is None:
            continue
        (w1, c1), (w2, c2) = inner, outer
        name = second.name or f"gemm_{index}"
        weight, bias = f"{name}_folded_weight", f"{name}_folded_bias"
        added += [
            numpy_helper.from_array((w1 @ w2).T.astype(np.float32), weight),  # stored (out, in), as Linear does
            numpy_helper.from_array((c1 @ w2 + c2).astype(np.float32), bias),
        ]
        replaced[index] = helper.make_node(
            "Gemm", [first.input[0], weight, bias], list(second.output), name=name, transB=1
        )
        touched |= {source, index}
    if not replaced:
        return 0
    nodes = [replaced.get(i, node) for i, node in enumerate(graph.node) if i in replaced or i not in touched]
    del graph.node[:]
    graph.node.extend(nodes)
    read = {name for node in nodes for name in node.input}
    kept = [init for init in graph.initializer if init.name in read] + added
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return len(replaced)
