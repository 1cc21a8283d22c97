"""Trace a CAStreamNet into one ONNX graph: input ``image`` with a symbolic batch axis, outputs by name (the
contract's table, in its order).

The graph comes from the ``torch.export`` based exporter (the TorchScript one is deprecated and leaves
the attention map's height and width symbolic too). Debug information that the exporter attaches to
every node (stack traces with local file paths) is dropped, and the rewrites in ``export.rewrite`` run.
"""

from __future__ import annotations

import logging

import onnx
import torch
from torch import Tensor, nn
from torch.export import Dim

from export.rewrite import attention_as_matmul, fold_linear_chains
from service.contract import ATTENTION, BATCH, CLASS_MAPS, EMBEDDING, INPUT, LOGITS, output_names
from training.families import normalising_scale
from training.model import CAStreamNet

log = logging.getLogger(__name__)

OPSET = 20
# Parameters of the CA stream appear in the graph under this prefix (the wrapper's attribute is ``model``).
STREAM_PREFIX = "model.stream."
# The class-map head's folded weights (the wrapper's attribute ``class_head``): float32 like the stream.
CLASS_HEAD_PREFIX = "class_head."


class ClassMapHead(nn.Module):
    """Class-specific maps from the last feature map in one product: the head folded into what pools the map.

    CA: the last block pools ``sum_p a_p f_p``, projects it (``W f + b``) and the frozen head turns that into logits.
    GAP: the head reads the mean ``sum_p f_p / P`` as it is (``W = I``, ``b = 0``, ``a_p = 1/P``: the class
    activation map). The head is affine up to a per-image factor ``s`` (the backbone's ``AffineHead``: 1 for a plain
    Linear; after a LayerNorm, the inverse deviation of the pooled vector), so logit c splits exactly over positions as
    ``a_p * s * (M f_p + m)_c`` plus a constant, with ``M`` and ``m`` folded here once, in float64. The same split as
    ``CAStreamNet.class_maps``, which verification compares it with.
    """

    def __init__(self, model: CAStreamNet, pooling: str) -> None:
        super().__init__()
        head = model.backbone.affine_head(torch.float64)
        if pooling == "ca":
            last = model.stream.blocks[-1]
            weight, bias = head.fold(last.proj.weight.double(), last.proj.bias.double())  # (K, C), (K,)
        else:
            width = model.backbone.head_width
            weight, bias = head.fold(torch.eye(width, dtype=torch.float64), torch.zeros(width, dtype=torch.float64))
        self.eps = head.eps
        self.register_buffer("weight", weight.float().detach().clone())  # (K, C)
        self.register_buffer("bias", bias.float().detach().clone()[:, None])  # (K, 1)

    def forward(self, features: Tensor, weights: Tensor | None, pooled: Tensor) -> Tensor:
        """Maps (N, K, P) for the last feature map (N, C, P), its pooling weights (N, P) (None: GAP's 1/P each) and
        the pooled vector (N, D)."""
        evidence = torch.matmul(self.weight, features) + self.bias  # (N, K, P)
        if self.eps is not None:
            evidence = evidence * normalising_scale(pooled, self.eps)[:, :, None]  # (N, 1, 1)
        if weights is None:
            return evidence / features.shape[-1]
        return evidence * weights[:, None, :]


class Exportable(nn.Module):
    """The model as the graph sees it: one fixed pooling, its outputs by name, returned in the table's order."""

    def __init__(self, model: CAStreamNet, pooling: str) -> None:
        super().__init__()
        self.names = output_names(pooling)  # validates the name
        self.model, self.pooling = model, pooling
        if CLASS_MAPS in self.names:
            self.class_head = ClassMapHead(model, pooling)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        outputs = self.outputs(image)
        return tuple(outputs[name] for name in self.names)

    def outputs(self, image: Tensor) -> dict[str, Tensor]:
        """Every output of the graph, by name."""
        taps = self.model.forward_features(image)
        pooled, weights = self.model.pool(taps, self.pooling)  # (N, D), (N, P) or None
        outputs = {LOGITS: self.model.backbone.classify(pooled), EMBEDDING: pooled}  # (N, K), (N, D)
        last = taps[-1].float()
        height, width = last.shape[-2:]
        if weights is not None:
            outputs[ATTENTION] = weights.view(-1, height, width)  # (N, h, w)
        if CLASS_MAPS in self.names:
            maps = self.class_head(last.flatten(2), weights, pooled)  # (N, K, P)
            outputs[CLASS_MAPS] = maps.view(-1, maps.shape[1], height, width)  # (N, K, h, w)
        return outputs


def export_graph(model: CAStreamNet, pooling: str, image_size: int) -> onnx.ModelProto:
    """The float32 graph of ``model`` with ``pooling`` for square images of ``image_size`` pixels."""
    wrapper = Exportable(model.float().cpu().eval(), pooling).eval()
    # A batch of 2: torch.export specialises sizes 0 and 1, which would pin the batch axis.
    example = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            input_names=[INPUT],
            output_names=list(output_names(pooling)),
            dynamic_shapes={INPUT: {0: Dim(BATCH)}},
            opset_version=OPSET,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    proto = program.model_proto
    strip_debug_info(proto)
    rewritten = attention_as_matmul(proto.graph)
    folded = fold_linear_chains(proto.graph)
    log.debug(
        "exported %s/%s at %d px; %d attention products as MatMul, %d Linear pairs folded",
        model.config.backbone,
        pooling,
        image_size,
        rewritten,
        folded,
    )
    return proto


def strip_debug_info(proto: onnx.ModelProto) -> None:
    """Drops per-node metadata and doc strings (stack traces, source paths) that inference never reads."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        del value.metadata_props[:]
    del proto.graph.metadata_props[:]
    proto.graph.doc_string = ""
    proto.doc_string = ""


def stream_nodes(graph: onnx.GraphProto) -> list[str]:
    """Names of the nodes that depend on a CA-stream parameter or the class-map head: the stream, the head and the
    class maps.

    Every block depends on the learnable token, so this covers the whole stream whatever the exporter
    folded; the backbone never depends on it. For a GAP graph: the class maps' nodes alone.
    """
    prefixes = (STREAM_PREFIX, CLASS_HEAD_PREFIX)
    tainted = {init.name for init in graph.initializer if init.name.startswith(prefixes)}
    names = []
    for node in graph.node:  # nodes are in topological order
        if any(name in tainted for name in node.input):
            tainted.update(node.output)
            names.append(node.name)
    return names


def toposort(graph: onnx.GraphProto) -> None:
    """Reorders ``graph.node`` topologically (converters may append nodes that earlier ones read)."""
    available = {value.name for value in graph.input} | {init.name for init in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        waiting = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            missing = sorted({name for node in waiting for name in node.input} - available)[:5]
            raise ValueError(f"graph has a cycle or reads undefined values {missing}; it cannot be sorted")
        pending = waiting
    del graph.node[:]
    graph.node.extend(ordered)
