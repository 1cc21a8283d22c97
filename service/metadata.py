"""What the service reads from the model file's metadata properties (docs/onnx-model.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from service import contract
from service.contract import INTERPOLATIONS

SUPPORTED_FORMAT = contract.FORMAT


class ModelError(RuntimeError):
    """The model file cannot be served; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side, centre-crop, scale, normalise: torchvision's eval transform."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    scale: float = 1 / 255

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {data!r}")
        layout, dtype = data.get("layout", "NCHW"), data.get("dtype", "float32")
        if (layout, dtype) != ("NCHW", "float32"):
            raise ValueError(f"layout/dtype {layout}/{dtype} is not supported; expected NCHW/float32")
        try:
            prep = cls(
                resize=int(data["resize"]),
                crop=int(data["crop"]),
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
                interpolation=str(data.get("interpolation", "bilinear")),
                scale=float(data.get("scale", 1 / 255)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{data!r} lacks or mistypes a field ({exc}); expected resize, crop, mean, std") from None
        if prep.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {prep.interpolation!r} is not one of {INTERPOLATIONS}")
        if len(prep.mean) != 3 or len(prep.std) != 3 or min(prep.std) <= 0:
            raise ValueError(f"mean {prep.mean} and std {prep.std} need 3 values each, std positive")
        if prep.resize < 1 or prep.crop < 1:
            raise ValueError(f"resize {prep.resize} and crop {prep.crop} must be positive")
        return prep


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

    @property
    def has_attention(self) -> bool:
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
    if fmt != SUPPORTED_FORMAT:
        raise ModelError(f"{source}: castream_format {fmt!r} is not supported; this service reads {SUPPORTED_FORMAT!r}")
    classes = parsed(contract.CLASSES_KEY, json.loads)
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ModelError(f"{source}: metadata 'classes' must be a non-empty JSON list of strings, got {classes!r}")
    pooling = need(contract.POOLING_KEY)
    if pooling not in contract.POOLINGS:
        raise ModelError(f"{source}: metadata 'pooling' is {pooling!r}; expected one of {contract.POOLINGS}")
    dataset = parsed(contract.DATASET_KEY, json.loads) if contract.DATASET_KEY in props else None
    return ModelInfo(
        name=need(contract.NAME_KEY),
        version=props.get(contract.VERSION_KEY, "unknown"),
        backbone=props.get(contract.BACKBONE_KEY, "unknown"),
        pooling=pooling,
        precision=props.get(contract.PRECISION_KEY, "fp32"),
        classes=tuple(classes),
        preprocessing=parsed(contract.PREPROCESSING_KEY, lambda text: Preprocessing.from_dict(json.loads(text))),
        val_top1=parsed(contract.VAL_TOP1_KEY, float) if contract.VAL_TOP1_KEY in props else None,
        dataset=dataset if isinstance(dataset, dict) else None,
    )
