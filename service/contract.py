"""The model-file contract (docs/onnx-model.md): tensor names, metadata keys, format version, poolings, the
preprocessing record and the execution providers a model file is run with.

Written once here and imported by both ``export/`` (which writes model files) and ``service/`` (which
reads them). It imports neither torch nor onnx, so the serving image carries it with nothing else.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _project_version() -> str:
    """castream's version, declared once in pyproject.toml: the installed package's, or, where only service/ is
    copied and nothing is installed (the serving image), the pyproject.toml copied beside it."""
    try:
        return importlib.metadata.version("castream")
    except importlib.metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        with open(pyproject, "rb") as file:
            return tomllib.load(file)["project"]["version"]


VERSION = _project_version()  # written into every model file (``castream_version``) and reported by the service

# Graph tensors. ``class_maps`` is optional within format 1: files exported before it existed lack it.
INPUT = "image"
LOGITS, ATTENTION, CLASS_MAPS = "logits", "attention", "class_maps"
BATCH = "N"  # name of the symbolic batch dimension, on the input and on every output

FORMAT = "1"  # version of this contract, metadata property ``castream_format``
POOLINGS = ("ca", "gap")
NUMERICS = ("fp32", "int8", "fp16")  # the graph's numeric format, metadata property ``precision``

# Metadata properties (all values are strings; those in JSON_KEYS hold JSON).
FORMAT_KEY = "castream_format"
VERSION_KEY = "castream_version"
NAME_KEY = "model_name"
BACKBONE_KEY = "backbone"
POOLING_KEY = "pooling"
NUMERICS_KEY = "precision"
CLASSES_KEY = "classes"
PREPROCESSING_KEY = "preprocessing"
VAL_TOP1_KEY = "val_top1"
DATASET_KEY = "dataset"
VERIFICATION_KEY = "verification"
TRAINED_ON_KEY = "trained_on"  # a sentence saying what the model knows, for people
SAMPLES_KEY = "samples"  # a few labelled images of the training data, [{"label": ..., "png": <base64>}, ...]
JSON_KEYS = (CLASSES_KEY, PREPROCESSING_KEY, DATASET_KEY, VERIFICATION_KEY, SAMPLES_KEY)

# The preprocessing record: torchvision's eval transform, then the graph's input layout.
PREPROCESSING_FIELDS = ("resize", "crop", "mean", "std", "interpolation")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
# ``scale`` maps uint8 pixels to [0, 1] before normalising.
INPUT_LAYOUT = {"layout": "NCHW", "dtype": "float32", "scale": 1 / 255}

# ONNX Runtime's names of the execution providers that export checks on and the service chooses between.
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


@dataclass(frozen=True)
class Preprocessing:
    """The preprocessing record: resize the shorter side, centre-crop (torchvision's eval transform), scale,
    normalise. Checkpoints store :meth:`to_dict`; model files store it with :data:`INPUT_LAYOUT` added."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    scale: float = 1 / 255

    def to_dict(self) -> dict[str, Any]:
        """The record's fields (:data:`PREPROCESSING_FIELDS`), JSON-ready."""
        values = {name: getattr(self, name) for name in PREPROCESSING_FIELDS}
        return {**values, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """The record from a checkpoint's or a model file's dict, validated; ``ValueError`` names what is wrong."""
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


def output_names(pooling: str) -> tuple[str, ...]:
    """The outputs a model file of ``pooling`` has, in graph order."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
    return (LOGITS, ATTENTION, CLASS_MAPS) if pooling == "ca" else (LOGITS,)


def required_outputs(pooling: str) -> tuple[str, ...]:
    """The outputs a file must have to be served: ``class_maps`` may be missing from older CA files."""
    return tuple(name for name in output_names(pooling) if name != CLASS_MAPS)
