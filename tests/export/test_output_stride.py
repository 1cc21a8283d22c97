"""Output stride 16 end to end, for ResNet-18 (BasicBlocks), ResNet-50 (Bottlenecks) and ConvNeXt-Tiny: a tiny run
trains, ``python -m export.to_onnx`` exports it with its parity checks (its Triton repository of the usual shape),
the service serves the finer grid, and the interpretability evaluation scores it. At 64 px the grid is 4 x 4
instead of 2 x 2."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export import metadata
from export.samples import load_samples
from export.sessions import make_session
from export.triton import write_repository
from service.contract import OUTPUT_STRIDE_KEY
from tests.deploy.tritontools import check_repository
from tests.runs import evaluate_tiny, export_command, fit_tiny, serve_and_compare
from tests.service.servicetools import solid_png
from training import checkpoint, synthetic
from training.data import DataConfig, Preprocessing
from training.model import ModelConfig

GRID = (4, 4)  # 64 px at stride 16
# ResNet-18 trains in seconds; the larger backbones' runs, and every export, serving and evaluation, are slow.
BACKBONES = [
    pytest.param("resnet18", id="resnet18"),
    pytest.param("resnet50", id="resnet50", marks=pytest.mark.slow),
    pytest.param("convnext_tiny", id="convnext_tiny", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module", params=BACKBONES)
def fine_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run at output stride 16 on 64 px synthetic images, as ``tiny_run`` trains its ResNet-18; its checkpoint."""
    return fit_tiny(tmp_path_factory.mktemp(f"stride16-{request.param}"), backbone=request.param, output_stride=16)


@pytest.fixture(scope="module")
def fine_onnx(fine_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_command(fine_run, tmp_path_factory.mktemp("stride16-export") / "model.onnx")


def test_the_model_file_records_the_output_stride() -> None:
    classes = tuple(synthetic.CLASSES)
    state = checkpoint.Checkpoint(ModelConfig(), {}, classes, Preprocessing(64, 64), DataConfig(image_size=64))
    assert metadata.describe(state, "ca", "fp32")[OUTPUT_STRIDE_KEY] == "32"  # no weights needed
    fine = replace(state, model=ModelConfig(output_stride=16))
    assert metadata.describe(fine, "gap", "int8")[OUTPUT_STRIDE_KEY] == "16"


def test_a_stride_16_run_trains_and_records_its_stride(fine_run: Path) -> None:
    state = checkpoint.load(fine_run)
    assert state.model.output_stride == 16 and state.stage == checkpoint.FINISHED
    assert set(state.completed) == {"full", "stream"}
    assert json.loads((fine_run.parent / "config.json").read_text())["options"]["output_stride"] == 16
    model = state.build_model()
    assert model.backbone.output_stride == 16
    with torch.no_grad():
        logits, attention = model(torch.zeros(2, 3, 64, 64))
    assert logits.shape == (2, len(synthetic.CLASSES)) and attention.shape == (2, *GRID)
    assert metadata.describe(state, "ca", "fp32")[OUTPUT_STRIDE_KEY] == "16"


@pytest.mark.slow  # tracing and checking the export
def test_a_stride_16_model_exports_the_finer_grid_with_exact_class_maps(fine_run: Path, fine_onnx: Path) -> None:
    props = metadata.read(fine_onnx)
    assert props[OUTPUT_STRIDE_KEY] == "16"
    verification = props["verification"]
    assert [entry["batch_size"] for entry in verification["parity"]] == [1, 8]  # export checked itself
    state = checkpoint.load(fine_run)
    model = state.build_model()
    images = load_samples(state, "val", 3, cache_dir=None).images
    session = make_session(onnx.load(str(fine_onnx)))
    logits, attention, maps = session.run(["logits", "attention", "class_maps"], {"image": images})
    assert attention.shape == (3, *GRID) and (attention >= 0).all()
    np.testing.assert_allclose(attention.sum(axis=(1, 2)), 1.0, atol=1e-5)
    # The maps plus the head's constant (a LayerNorm head's too) add up to the logits.
    constant = model.backbone.affine_head().constant.detach().numpy()
    assert maps.shape == (3, len(synthetic.CLASSES), *GRID)
    allowed = 1e-4 * max(1.0, float(np.abs(logits).max()))
    np.testing.assert_allclose(maps.sum(axis=(2, 3)) + constant, logits, rtol=0, atol=allowed)
    with torch.no_grad():
        expected = model(torch.from_numpy(images))
    np.testing.assert_allclose(logits, expected.logits.numpy(), rtol=0, atol=allowed)
    np.testing.assert_allclose(attention, expected.attention.numpy(), rtol=0, atol=1e-4)


@pytest.mark.slow
def test_the_triton_repository_has_its_usual_shape_with_the_finer_grid(fine_onnx: Path, tmp_path: Path) -> None:
    folder = write_repository(fine_onnx, tmp_path / "triton-models")
    config = check_repository(folder, fine_onnx)  # the checks every repository passes
    dims = {tensor.name: list(tensor.dims) for tensor in config.output}
    assert dims["attention"] == list(GRID) and dims["class_maps"] == [len(synthetic.CLASSES), *GRID]


@pytest.mark.slow
def test_the_service_serves_the_finer_attention_grid(fine_onnx: Path) -> None:
    images = [solid_png((200, 40, 90), size=(90, 70)), solid_png((20, 160, 220), size=(64, 80))]
    info, model, grid = serve_and_compare(fine_onnx, images)
    assert model.output_stride == 16 and grid == GRID
    assert info["attention"] == {"height": GRID[0], "width": GRID[1]} and info["output_stride"] == 16


@pytest.mark.slow
def test_the_evaluation_scores_a_stride_16_model(fine_run: Path, tmp_path: Path) -> None:
    evaluate_tiny(fine_run, tmp_path)
