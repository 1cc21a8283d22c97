"""What the service reads from the model file's metadata properties (docs/onnx-model.md)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from service import contract
from service.contract import MonitoringReference, Preprocessing

__all__ = ["ModelError", "ModelInfo", "Preprocessing", "Sample", "parse_metadata"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ModelError(RuntimeError):
    """The model file cannot be served; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class Sample:
    """A labelled image of the training data, as PNG bytes, for people trying the model."""

    label: str
    png: bytes


@dataclass(frozen=True)
class ModelInfo:
    """The model's identity, classes and preprocessing."""

    name: str
    version: str
    backbone: str
    pooling: str
    precision: str
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    val_top1: float | None
    dataset: dict[str, Any] | None
    trained_on: str | None = None
    samples: tuple[Sample, ...] = ()
    output_stride: int = contract.OUTPUT_STRIDES[0]  # the last feature map's cell in input pixels
    monitoring: MonitoringReference | None = None  # the validation quantiles of the monitored figures
    # What the class maps are, where the graph has them (contract.EXPLANATIONS): "ca-stream" or "cam".
    explanation: str = contract.EXPLANATIONS["ca"]

    @property
    def has_attention(self) -> bool:
        """Whether the pooling's graph has attention, as the metadata says; what a file has is read from its graph
        (``OnnxModel.has``)."""
        return self.pooling == "ca"


def parse_metadata(props: dict[str, str], source: str) -> ModelInfo:
    """Build :class:`ModelInfo` from ONNX metadata properties, or raise :class:`ModelError` naming the key."""

    def need(key: str) -> str:
        if key not in props:
            raise ModelError(
                f"{source}: metadata property {key!r} is missing; re-export with `python -m export.to_onnx`"
            )
        return props[key]

    def parsed(key: str, parse: Any) -> Any:
        try:
            return parse(need(key))
        except ModelError:
            raise
        except (ValueError, TypeError) as exc:
            raise ModelError(f"{source}: metadata property {key!r} is invalid: {exc}") from None

    fmt = need(contract.FORMAT_KEY)
    if fmt != contract.FORMAT:
        raise ModelError(f"{source}: castream_format {fmt!r} is not supported; this service reads {contract.FORMAT!r}")
    classes = parsed(contract.CLASSES_KEY, json.loads)
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ModelError(f"{source}: metadata 'classes' must be a non-empty JSON list of strings, got {classes!r}")
    pooling = need(contract.POOLING_KEY)
    if pooling not in contract.POOLINGS:
        raise ModelError(f"{source}: metadata 'pooling' is {pooling!r}; expected one of {contract.POOLINGS}")
    dataset = parsed(contract.DATASET_KEY, json.loads) if contract.DATASET_KEY in props else None
    samples = parsed(contract.SAMPLES_KEY, _samples) if contract.SAMPLES_KEY in props else ()
    stride = parsed(contract.OUTPUT_STRIDE_KEY, int) if contract.OUTPUT_STRIDE_KEY in props else ModelInfo.output_stride
    if stride not in contract.OUTPUT_STRIDES:
        raise ModelError(f"{source}: metadata 'output_stride' is {stride!r}; expected one of {contract.OUTPUT_STRIDES}")
    # Files before the property: a CA file's class maps are its stream's (a GAP file then had none).
    explanation = props.get(contract.EXPLANATION_KEY, contract.EXPLANATIONS[pooling])
    if explanation not in contract.EXPLANATIONS.values():
        known = tuple(contract.EXPLANATIONS.values())
        raise ModelError(f"{source}: metadata 'explanation' is {explanation!r}; expected one of {known}")
    return ModelInfo(
        name=need(contract.NAME_KEY),
        version=props.get(contract.VERSION_KEY, "unknown"),
        backbone=props.get(contract.BACKBONE_KEY, "unknown"),
        pooling=pooling,
        precision=props.get(contract.NUMERICS_KEY, "fp32"),
        classes=tuple(classes),
        preprocessing=parsed(contract.PREPROCESSING_KEY, lambda text: Preprocessing.from_dict(json.loads(text))),
        val_top1=parsed(contract.VAL_TOP1_KEY, float) if contract.VAL_TOP1_KEY in props else None,
        dataset=dataset if isinstance(dataset, dict) else None,
        trained_on=props.get(contract.TRAINED_ON_KEY),
        samples=samples,
        output_stride=stride,
        monitoring=parsed(contract.MONITORING_KEY, _monitoring) if contract.MONITORING_KEY in props else None,
        explanation=explanation,
    )


def _monitoring(text: str) -> MonitoringReference:
    return MonitoringReference.from_dict(json.loads(text))


def _samples(text: str) -> tuple[Sample, ...]:
    """The ``samples`` property: a JSON list of ``{"label", "png"}`` with base64 PNG images."""
    entries = json.loads(text)
    if not isinstance(entries, list):
        raise ValueError(f"expected a JSON list, got {type(entries).__name__}")
    samples = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("label"), str) or "png" not in entry:
            raise ValueError(f"expected {{'label': <str>, 'png': <base64>}} entries, got {str(entry)[:80]!r}")
        png = base64.b64decode(entry["png"], validate=True)
        if not png.startswith(PNG_SIGNATURE):
            raise ValueError(f"the image of {entry['label']!r} is not a PNG")
        samples.append(Sample(entry["label"], png))
    return tuple(samples)
