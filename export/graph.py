"""Trace a CAStreamNet into one ONNX graph: input ``image`` with a symbolic batch axis, outputs by name.

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
from training.model import POOLINGS, CAStreamNet

log = logging.getLogger(__name__)

INPUT, LOGITS, ATTENTION = "image", "logits", "attention"
BATCH = "N"  # name of the symbolic batch dimension in the graph
OPSET = 20
# Parameters of the CA stream appear in the graph under this prefix (the wrapper's attribute is ``model``).
STREAM_PREFIX = "model.stream."


def output_names(pooling: str) -> tuple[str, ...]:
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
    return (LOGITS, ATTENTION) if pooling == "ca" else (LOGITS,)


class Exportable(nn.Module):
    """The model as the graph sees it: one fixed pooling, outputs as a plain tuple."""

    def __init__(self, model: CAStreamNet, pooling: str) -> None:
        super().__init__()
        output_names(pooling)  # validates the name
        self.model, self.pooling = model, pooling

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        output = self.model(image, self.pooling)
        if self.pooling == "gap":
            return (output.logits,)  # (N, classes)
        return output.logits, output.attention  # (N, classes), (N, h, w)


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
            dynamic_shapes={"image": {0: Dim(BATCH)}},
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
    """Names of the nodes that depend on a CA-stream parameter: the stream and the head after it.

    Every block depends on the learnable token, so this covers the whole stream whatever the exporter
    folded; the backbone never depends on it. Empty for a GAP graph.
    """
    tainted = {init.name for init in graph.initializer if init.name.startswith(STREAM_PREFIX)}
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
