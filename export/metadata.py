"""The model file's metadata properties: everything the service needs besides the graph.

Keys and formats are the contract in docs/onnx-model.md. All values are strings; structured values
are JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx

from service import contract
from service.contract import FORMAT, INPUT_LAYOUT, JSON_KEYS, NUMERICS, VERSION
from training.checkpoint import Checkpoint


def default_name(backbone: str, pooling: str, numerics: str) -> str:
    name = f"castream-{backbone}-{pooling}"
    return name if numerics == "fp32" else f"{name}-{numerics}"


def describe(
    state: Checkpoint,
    pooling: str,
    numerics: str,
    name: str | None = None,
    verification: dict[str, Any] | None = None,
    samples: list[dict[str, str]] | None = None,
    trained_on: str | None = None,
) -> dict[str, str]:
    """The metadata properties of a model exported from checkpoint ``state``.

    ``trained_on`` says what a classifier castream did not train was trained on (``export.pretrained``); its record's
    data set is then only the images its export was checked on, and is not written as the model's.
    """
    if numerics not in NUMERICS:
        raise ValueError(f"unknown numeric format {numerics!r}; expected one of {NUMERICS}")
    backbone = state.model.backbone
    props = {
        contract.FORMAT_KEY: FORMAT,
        contract.VERSION_KEY: VERSION,
        contract.NAME_KEY: name or default_name(backbone, pooling, numerics),
        contract.BACKBONE_KEY: backbone,
        contract.POOLING_KEY: pooling,
        contract.NUMERICS_KEY: numerics,
        contract.CLASSES_KEY: json.dumps(list(state.classes)),
        contract.PREPROCESSING_KEY: json.dumps({**state.preprocessing.to_dict(), **INPUT_LAYOUT}),
        contract.TRAINED_ON_KEY: trained_on or state.data.describe(state.classes),
        contract.OUTPUT_STRIDE_KEY: str(state.model.output_stride),
        contract.EXPLANATION_KEY: contract.EXPLANATIONS[pooling],
    }
    if trained_on is None:
        props[contract.DATASET_KEY] = json.dumps(state.data.to_dict())
    if samples:
        props[contract.SAMPLES_KEY] = json.dumps(samples)
    top1 = state.metrics.get(f"val_top1_{pooling}")
    if top1 is not None:
        props[contract.VAL_TOP1_KEY] = str(float(top1))
    if verification is not None:
        props[contract.VERIFICATION_KEY] = json.dumps(verification)
    return props


def attach(proto: onnx.ModelProto, props: dict[str, str]) -> None:
    """Replaces the model's metadata properties with ``props``."""
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)


def read(model: onnx.ModelProto | str | Path) -> dict[str, Any]:
    """The metadata of a model file (or proto), JSON values decoded."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    props = {prop.key: prop.value for prop in model.metadata_props}
    return {key: json.loads(value) if key in JSON_KEYS else value for key, value in props.items()}
