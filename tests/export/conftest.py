"""Exports of the tiny run, made once per session and shared by the export tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest

from export.agreement import Thresholds
from export.pipeline import ExportOptions, ExportReport, export_checkpoint
from training import checkpoint

# The tiny run classifies at chance, so its logits sit near ties and one top-1 flip in its 64 images (which
# weights the machine's kernels give decides) is rounding, not disagreement: the tiny export is held to 0.95. The
# shipped model's own export keeps the default 0.99 (`make models/castream-int8.onnx`; BENCHMARKS.md's int8
# section). Speed is measured and reported but not required: tests assert behaviour, not timings.
TINY_INT8 = Thresholds(top1=0.95, speedup=0.0)


def perturbed(real: Callable[..., onnx.ModelProto]) -> Callable[..., onnx.ModelProto]:
    """An exporter whose graph has one convolution's weights scaled by 1 %: a subtly broken export."""

    def broken(*args: Any, **kwargs: Any) -> onnx.ModelProto:
        proto = real(*args, **kwargs)
        inits = {init.name: init for init in proto.graph.initializer}
        conv = next(node for node in proto.graph.node if node.op_type == "Conv")
        weight = inits[conv.input[1]]
        weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * 1.01, weight.name))
        return proto

    return broken


def export_tiny(checkpoint_path: Path, out: Path, **options: Any) -> ExportReport:
    """Exports with settings sized for the tiny run (64 validation images, short speed check)."""
    defaults = {"calibration_images": 64, "agreement_images": 64, "speed_budget_s": 0.5}
    return export_checkpoint(ExportOptions(checkpoint=str(checkpoint_path), out=str(out), **{**defaults, **options}))


@pytest.fixture(scope="session")
def tiny_state(tiny_checkpoint: Path) -> checkpoint.Checkpoint:
    return checkpoint.load(tiny_checkpoint)


@pytest.fixture(scope="session")
def ca_export(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportReport:
    return export_tiny(tiny_checkpoint, tmp_path_factory.mktemp("export") / "ca.onnx")


@pytest.fixture(scope="session")
def gap_export(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportReport:
    return export_tiny(tiny_checkpoint, tmp_path_factory.mktemp("export") / "gap.onnx", pooling="gap")


@pytest.fixture(scope="session")
def int8_export(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportReport:
    thresholds = TINY_INT8
    out = tmp_path_factory.mktemp("export") / "int8.onnx"
    return export_tiny(tiny_checkpoint, out, numerics="int8", thresholds=thresholds)
