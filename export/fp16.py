"""Half-precision graphs for GPU serving: the backbone in float16, the CA stream and head in float32.

Inputs and outputs stay float32 (casts at the edges), so the service feeds every precision the same way.
The stream stays float32 for the same reason as in int8: its softmax is the attention output, and its
scores (token . features over hundreds of channels) can exceed float16's range. Each tensor crossing
between the two regions is cast once.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from export.graph import stream_nodes, toposort
from export.sessions import CPU, CUDA
from export.verify import VerificationError

log = logging.getLogger(__name__)

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16


def _float_tensors(proto: onnx.ModelProto) -> set[str]:
    """Names of every float32 tensor of the graph (inputs, initializers, intermediate values, outputs)."""
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    values = (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)
    names = {value.name for value in values if value.type.tensor_type.elem_type == FLOAT}
    return names | {init.name for init in proto.graph.initializer if init.data_type == FLOAT}


def _to_half(tensor: TensorProto, name: str | None = None) -> TensorProto:
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), name or tensor.name)


def _halve_attributes(node: onnx.NodeProto) -> None:
    """Float32 types and constants held in attributes of a node that now runs in float16."""
    for attribute in node.attribute:
        if node.op_type == "Cast" and attribute.name == "to" and attribute.i == FLOAT:
            attribute.i = HALF
        elif attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == FLOAT:
            attribute.t.CopyFrom(_to_half(attribute.t, attribute.t.name))


def convert_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The float16 version of a float32 graph (a new proto; ``proto`` is left as it is)."""
    floats = _float_tensors(proto)
    keep = set(stream_nodes(proto.graph))  # nodes that stay float32
    half_readers = {name for node in proto.graph.node if node.name not in keep for name in node.input}
    float_readers = {name for node in proto.graph.node if node.name in keep for name in node.input}
    float_readers |= {value.name for value in proto.graph.output}

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    initializers = []
    for init in graph.initializer:
        if init.data_type != FLOAT or init.name not in half_readers:
            initializers.append(init)
            continue
        initializers.append(_to_half(init, f"{init.name}_fp16" if init.name in float_readers else None))
        if init.name in float_readers:
            initializers.append(init)  # read in both regions: keep a float32 copy for the stream
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    halved = {init.name for init in proto.graph.initializer if init.data_type == FLOAT and init.name in half_readers}
    shared = halved & float_readers

    # Where each float tensor lives: float16 if a float16 node (or a halved initializer) makes it.
    half_tensors = {name for name in halved if name not in shared}
    half_tensors |= {o for node in proto.graph.node if node.name not in keep for o in node.output if o in floats}
    casts: dict[tuple[str, int], str] = {}
    nodes = []

    def read(name: str, wanted: int) -> str:
        if name not in floats:
            return name
        if name in shared:
            return f"{name}_fp16" if wanted == HALF else name
        if (name in half_tensors) == (wanted == HALF):
            return name
        key = (name, wanted)
        if key not in casts:
            casts[key] = f"{name}_as_{'fp16' if wanted == HALF else 'fp32'}"
            nodes.append(helper.make_node("Cast", [name], [casts[key]], to=wanted, name=f"{casts[key]}_cast"))
        return casts[key]

    for node in graph.node:
        wanted = FLOAT if node.name in keep else HALF
        for index, name in enumerate(node.input):
            node.input[index] = read(name, wanted)
        if wanted == HALF:
            _halve_attributes(node)
        nodes.append(node)
    # Float32 outputs made in the float16 region are produced under a new name and cast back.
    for output in graph.output:
        if output.name in half_tensors:
            inner = f"{output.name}_fp16"
            for node in nodes:
                node.output[:] = [inner if o == output.name else o for o in node.output]
                node.input[:] = [inner if i == output.name else i for i in node.input]
            nodes.append(helper.make_node("Cast", [inner], [output.name], to=FLOAT, name=f"{output.name}_cast"))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # stale types; ONNX Runtime and the checker infer them again
    toposort(graph)
    return model


def check_fp16_structure(proto: onnx.ModelProto) -> None:
    """Every convolution weight is float16 and the stream's parameters stayed float32."""
    initializers = {init.name: init for init in proto.graph.initializer}
    convolutions = [node for node in proto.graph.node if node.op_type == "Conv"]
    full = [n.name for n in convolutions if n.input[1] in initializers and initializers[n.input[1]].data_type != HALF]
    if not convolutions or full:
        raise VerificationError(
            f"the fp16 graph has {len(full)} of {len(convolutions)} convolutions with non-float16 weights "
            f"(first: {full[:3]}); expected all of them in float16"
        )
    halved = [init.name for init in proto.graph.initializer if init.data_type == HALF and ".stream." in init.name]
    if halved:
        raise VerificationError(
            f"stream parameters {halved[:3]} were converted to float16; the stream must stay float32"
        )


def numeric_providers() -> list[list[str]]:
    """Execution providers to check an fp16 graph's numbers on, best first: the GPU, then the CPU."""
    available = ort.get_available_providers()
    return [[CUDA, CPU]] * (CUDA in available) + [[CPU]]
