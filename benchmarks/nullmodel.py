"""A null model: a model file the service serves exactly as it serves ``reference`` (same input, outputs and
metadata) whose graph does next to nothing, so that a benchmark on it measures the service rather than the model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.contract import ATTENTION, BATCH, CLASS_MAPS, CLASSES_KEY, INPUT, LOGITS, NAME_KEY, PREPROCESSING_KEY

STRIDE = 32  # the attention grid's cell in pixels, where the reference's graph leaves the grid symbolic


def _grid(reference: onnx.ModelProto, crop: int) -> tuple[int, int]:
    """The reference's attention grid [h, w] from its outputs' static dimensions, else the crop over the stride."""
    for output in reference.graph.output:
        if output.name in (ATTENTION, CLASS_MAPS):
            dims = [d.dim_value for d in output.type.tensor_type.shape.dim[-2:]]
            if len(dims) == 2 and all(dims):
                return dims[0], dims[1]
    return max(1, crop // STRIDE), max(1, crop // STRIDE)


def null_model(reference: Path) -> onnx.ModelProto:
    """A graph with ``reference``'s input, outputs and metadata properties (its name marked ``-null``) that reads
    one pixel per image: ``logits`` [N, C] are that pixel times fixed weights, ``attention`` [N, h, w] is uniform
    (a softmax, so each map sums to 1) and ``class_maps`` [N, C, h, w] split each logit over it exactly."""
    model = onnx.load(str(reference), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    classes = len(json.loads(props[CLASSES_KEY]))
    crop = int(json.loads(props[PREPROCESSING_KEY])["crop"])
    outputs = {o.name for o in model.graph.output}
    h, w = _grid(model, crop)
    weights = np.linspace(-1.0, 1.0, classes, dtype=np.float32).reshape(1, classes)
    inits = [
        numpy_helper.from_array(np.array([0, 0, 0], np.int64), "starts"),
        numpy_helper.from_array(np.array([1, 1, 1], np.int64), "ends"),
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "map_axes"),
        numpy_helper.from_array(weights, "W"),
        numpy_helper.from_array(np.zeros((1, h * w), np.float32), "flat"),
        numpy_helper.from_array(np.array([0, h, w], np.int64), "grid_shape"),
        numpy_helper.from_array(np.array([1], np.int64), "class_axis"),
    ]
    nodes = [
        helper.make_node("Slice", [INPUT, "starts", "ends", "axes"], ["pixel4"]),  # [N, 1, 1, 1]
        helper.make_node("Squeeze", ["pixel4", "map_axes"], ["pixel"]),  # [N, 1]
        helper.make_node("Mul", ["pixel", "W"], [LOGITS]),  # [N, C]
    ]
    declared = [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, [BATCH, classes])]
    if ATTENTION in outputs or CLASS_MAPS in outputs:
        nodes += [
            helper.make_node("Mul", ["pixel", "flat"], ["scores"]),  # [N, h*w], all zero
            helper.make_node("Softmax", ["scores"], ["weights"], axis=1),  # uniform, sums to 1
            helper.make_node("Reshape", ["weights", "grid_shape"], [ATTENTION]),  # [N, h, w]
        ]
        declared.append(helper.make_tensor_value_info(ATTENTION, TensorProto.FLOAT, [BATCH, h, w]))
    if CLASS_MAPS in outputs:
        nodes += [
            helper.make_node("Unsqueeze", [LOGITS, "map_axes"], ["logits4"]),  # [N, C, 1, 1]
            helper.make_node("Unsqueeze", [ATTENTION, "class_axis"], ["attention4"]),  # [N, 1, h, w]
            helper.make_node("Mul", ["logits4", "attention4"], [CLASS_MAPS]),  # [N, C, h, w]
        ]
        declared.append(helper.make_tensor_value_info(CLASS_MAPS, TensorProto.FLOAT, [BATCH, classes, h, w]))
    image = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [BATCH, 3, crop, crop])
    graph = helper.make_graph(nodes, "castream-null", [image], declared, inits)
    null = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    null.ir_version = 8
    helper.set_model_props(null, props | {NAME_KEY: f"{props[NAME_KEY]}-null"})
    onnx.checker.check_model(null)
    return null


def save_null_model(reference: Path, path: Path) -> Path:
    """:func:`null_model` of ``reference`` written to ``path``."""
    onnx.save(null_model(reference), str(path))
    return path
