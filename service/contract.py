"""The model-file contract (docs/onnx-model.md): tensor names, the table of outputs, metadata keys, format version,
poolings, the preprocessing record, the execution providers a model file is run with, and the figures the service
monitors, whose validation quantiles a model file records.

Written once here and imported by both ``export/`` (which writes model files) and ``service/`` (which
reads them). It imports neither torch nor onnx, so the serving image carries it with nothing else.
"""

from __future__ import annotations

import importlib.metadata
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


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

# Graph tensors: the input, and the outputs of the table below (``OUTPUTS``).
INPUT = "image"
LOGITS, ATTENTION, CLASS_MAPS, EMBEDDING = "logits", "attention", "class_maps", "embedding"
BATCH = "N"  # name of the symbolic batch dimension, on the input and on every output

FORMAT = "1"  # version of this contract, metadata property ``castream_format``
POOLINGS = ("ca", "gap")
NUMERICS = ("fp32", "int8", "fp16")  # the graph's numeric format, metadata property ``precision``
# What each pooling's class maps are, metadata property ``explanation``: the logits split over the CA stream's learned
# attention, or a GAP model's class activation maps (CAM: the logits split over the grid through the classifier's
# weights, each position weighing the same; there is no learned attention).
EXPLANATIONS = {"ca": "ca-stream", "gap": "cam"}
# The last feature map's cell in input pixels, metadata property ``output_stride``: the backbone as torchvision builds
# it (the default, and what files without the property were exported at), or its last stage dilated.
OUTPUT_STRIDES = (32, 16)

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
OUTPUT_STRIDE_KEY = "output_stride"  # one of OUTPUT_STRIDES; absent from older files, which are all 32
EXPLANATION_KEY = "explanation"  # what the class maps are, one of EXPLANATIONS' values; absent from older files
MONITORING_KEY = "monitoring"  # the validation quantiles of the monitored figures (FIGURES); absent from older files
JSON_KEYS = (CLASSES_KEY, PREPROCESSING_KEY, DATASET_KEY, VERIFICATION_KEY, SAMPLES_KEY, MONITORING_KEY)

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


# The symbolic dimensions of the outputs' shapes, and what sets each.
DIMS = {
    BATCH: "the batch (symbolic in the graph)",
    "classes": "the class count: the length of the `classes` metadata list",
    "h": "the last feature map's height: 1/32 of the crop (1/16 with dilation)",
    "w": "the last feature map's width",
    "width": "the width of the pooled vector the classifier reads (the backbone's head width)",
}


@dataclass(frozen=True)
class Tolerance:
    """How far export lets an output of ONNX Runtime fall from PyTorch's, per numeric format checked against it.

    Each bound is a fraction of a scale: the largest absolute value of the reference output ``scale`` (the output's
    own, or the logits' for values in logit units), at least ``floor``; ``words`` says it in messages and the docs.
    """

    fp32: float
    fp16: float
    scale: str
    words: str
    floor: float = 0.0

    def fraction(self, numerics: str) -> float:
        """The fraction allowed for a graph in ``numerics`` (fp32 or fp16: int8 is checked against fp32 instead)."""
        if numerics not in ("fp32", "fp16"):
            raise ValueError(f"no PyTorch tolerance for {numerics!r}; expected 'fp32' or 'fp16'")
        return self.fp32 if numerics == "fp32" else self.fp16


LOGIT_SCALE = "the largest absolute logit, at least 1"


@dataclass(frozen=True)
class OutputSpec:
    """One output of the graph: one row of the table of outputs (docs/onnx-model.md).

    Attributes:
        shape: symbolic dimensions (``DIMS``), the batch first.
        poolings: the poolings whose graphs have it.
        optional: files exported before it existed lack it; they are still format 1 and serve everything else.
        float_in_int8: computed in float32 in an int8 file too (its nodes are left out of quantisation).
        tolerance: what export allows against PyTorch.
        on_request: the service computes it only when a request asks for it (it is large, or rarely wanted).
    """

    name: str
    shape: tuple[str, ...]
    meaning: str
    tolerance: Tolerance
    poolings: tuple[str, ...] = POOLINGS
    dtype: str = "float32"
    optional: bool = False
    float_in_int8: bool = True
    on_request: bool = False


# The table of outputs, in graph order. Everything else (the graph, export's checks, the service's listings and
# requests, the Triton configuration, the docs) iterates it.
OUTPUTS = (
    OutputSpec(
        LOGITS,
        (BATCH, "classes"),
        "the classifier's logits",
        Tolerance(fp32=1e-4, fp16=2e-2, scale=LOGITS, words=LOGIT_SCALE, floor=1.0),
    ),
    OutputSpec(
        ATTENTION,
        (BATCH, "h", "w"),
        "the last CA block's softmax weights: each map is non-negative and sums to 1",
        Tolerance(fp32=1e-4, fp16=1e-2, scale=ATTENTION, words="the largest weight of the maps"),
        poolings=("ca",),
    ),
    OutputSpec(
        CLASS_MAPS,
        (BATCH, "classes", "h", "w"),
        "each logit split exactly over the grid: `class_maps[n, c].sum() + constant[c] == logits[n, c]` (CA: over the "
        "stream's attention; GAP: the class activation map, CAM)",
        Tolerance(fp32=1e-4, fp16=2e-2, scale=LOGITS, words=LOGIT_SCALE, floor=1.0),
        optional=True,
        on_request=True,
    ),
    OutputSpec(
        EMBEDDING,
        (BATCH, "width"),
        "the pooled vector the classifier reads (CA: the stream's final token; GAP: the last feature map's mean), "
        "for retrieval and drift",
        Tolerance(fp32=1e-4, fp16=2e-2, scale=EMBEDDING, words="the largest absolute value of the embeddings"),
        optional=True,
        on_request=True,
    ),
)
OUTPUT_NAMES = tuple(spec.name for spec in OUTPUTS)
_BY_NAME = {spec.name: spec for spec in OUTPUTS}


def output_spec(name: str) -> OutputSpec:
    """The table's row for ``name``; ``ValueError`` names the outputs there are."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown output {name!r}; the outputs are {list(OUTPUT_NAMES)}") from None


def outputs_of(pooling: str) -> tuple[OutputSpec, ...]:
    """The rows of the outputs a model file of ``pooling`` has (optional ones included), in graph order."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
    return tuple(spec for spec in OUTPUTS if pooling in spec.poolings)


def output_names(pooling: str) -> tuple[str, ...]:
    """The outputs a model file of ``pooling`` has, in graph order."""
    return tuple(spec.name for spec in outputs_of(pooling))


def required_outputs(pooling: str) -> tuple[str, ...]:
    """The outputs a file must have to be served: optional ones may be missing from older files."""
    return tuple(spec.name for spec in outputs_of(pooling) if not spec.optional)


# The figures the service watches on every image it classifies (docs/service.md, "Metrics"), each in [0, 1], and the
# quantiles of them on validation images that export records in metadata property ``monitoring``: the band the drift
# alert (deploy/prometheus/) compares the live medians with. A model without attention has the last figure only.
FIGURES = ("attention_entropy", "attention_peak", "top1_probability")
ATTENTION_FIGURES = FIGURES[:2]
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_TINY = np.float32(1e-30)  # 0 * log(0) counts as 0


def figures_of(logits: np.ndarray, attention: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The figures of a batch, by name, each [n]: from ``logits`` [n, classes] the top-1 softmax probability, and from
    ``attention`` [n, h, w] (None for a model without) the entropy over log(h * w) (1 for a uniform map, 0 for all
    weight on one position) and the peak mass, its largest weight (1 / (h * w) for a uniform map, 1 for one position).
    """
    top1 = 1.0 / np.exp(logits - logits.max(axis=1, keepdims=True)).sum(axis=1)
    if attention is None:
        return {FIGURES[2]: top1}
    weights = attention.reshape(len(attention), -1)
    entropy = (weights * np.log(np.maximum(weights, _TINY))).sum(axis=1)
    entropy *= -1 / math.log(max(weights.shape[1], 2))
    np.minimum(entropy, 1.0, out=entropy)  # rounding may take a uniform map's past 1 (it is never below 0)
    return {FIGURES[0]: entropy, FIGURES[1]: weights.max(axis=1), FIGURES[2]: top1}


@dataclass(frozen=True)
class MonitoringReference:
    """Metadata property ``monitoring``: for each figure the model has, its ``QUANTILES`` over ``images`` validation
    images, in increasing order."""

    images: int
    quantiles: tuple[float, ...]
    figures: dict[str, tuple[float, ...]]

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "quantiles": list(self.quantiles),
                "figures": {name: list(values) for name, values in self.figures.items()}}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MonitoringReference:
        """The record from a model file's JSON, validated; ``ValueError`` names what is wrong."""
        if not isinstance(data, dict) or not isinstance(data.get("figures"), dict):
            raise ValueError(f'expected {{"images": ..., "quantiles": [...], "figures": {{...}}}}, got {data!r}')
        try:
            images, quantiles = int(data["images"]), tuple(float(q) for q in data["quantiles"])
            figures = {str(name): tuple(float(v) for v in values) for name, values in data["figures"].items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"lacks or mistypes a field ({exc}): {data!r}") from None
        unknown = sorted(set(figures) - set(FIGURES))
        if unknown:
            raise ValueError(f"unknown figures {unknown}; expected some of {FIGURES}")
        if images < 1 or not quantiles or not _ascending_fractions(quantiles):
            raise ValueError(f"images {images} must be positive and quantiles {list(quantiles)} ascend within [0, 1]")
        for name, values in figures.items():
            if len(values) != len(quantiles) or not _ascending_fractions(values):
                raise ValueError(f"{name}: {list(values)} must be {len(quantiles)} values ascending within [0, 1]")
        return cls(images, quantiles, figures)


def _ascending_fractions(values: tuple[float, ...]) -> bool:
    return list(values) == sorted(values) and 0 <= values[0] and values[-1] <= 1
