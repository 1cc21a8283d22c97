"""The model-file contract (docs/onnx-model.md): tensor names, metadata keys, format version, poolings.

Written once here and imported by both ``export/`` (which writes model files) and ``service/`` (which
reads them). It imports neither torch nor onnx, so the serving image carries it with nothing else.
"""

from __future__ import annotations

# Graph tensors. ``class_maps`` is optional within format 1: files exported before it existed lack it.
INPUT = "image"
LOGITS, ATTENTION, CLASS_MAPS = "logits", "attention", "class_maps"
BATCH = "N"  # name of the symbolic batch dimension, on the input and on every output

FORMAT = "1"  # version of this contract, metadata property ``castream_format``
POOLINGS = ("ca", "gap")
PRECISIONS = ("fp32", "int8", "fp16")

# Metadata properties (all values are strings; those in JSON_KEYS hold JSON).
FORMAT_KEY = "castream_format"
VERSION_KEY = "castream_version"
NAME_KEY = "model_name"
BACKBONE_KEY = "backbone"
POOLING_KEY = "pooling"
PRECISION_KEY = "precision"
CLASSES_KEY = "classes"
PREPROCESSING_KEY = "preprocessing"
VAL_TOP1_KEY = "val_top1"
DATASET_KEY = "dataset"
VERIFICATION_KEY = "verification"
JSON_KEYS = (CLASSES_KEY, PREPROCESSING_KEY, DATASET_KEY, VERIFICATION_KEY)

# The preprocessing record: torchvision's eval transform, then the graph's input layout.
PREPROCESSING_FIELDS = ("resize", "crop", "mean", "std", "interpolation")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
# ``scale`` maps uint8 pixels to [0, 1] before normalising.
INPUT_LAYOUT = {"layout": "NCHW", "dtype": "float32", "scale": 1 / 255}


def output_names(pooling: str) -> tuple[str, ...]:
    """The outputs a model file of ``pooling`` has, in graph order."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
    return (LOGITS, ATTENTION, CLASS_MAPS) if pooling == "ca" else (LOGITS,)


def required_outputs(pooling: str) -> tuple[str, ...]:
    """The outputs a file must have to be served: ``class_maps`` may be missing from older CA files."""
    return tuple(name for name in output_names(pooling) if name != CLASS_MAPS)
