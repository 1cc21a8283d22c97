"""The RegNet family end to end: a tiny run trains, ``python -m export.to_onnx`` exports it with its parity checks,
the service serves the file, and the interpretability evaluation scores it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export import metadata
from export.samples import load_samples
from export.sessions import make_session
from tests.runs import evaluate_tiny, export_command, fit_tiny, serve_and_compare
from tests.service.servicetools import solid_png
from training import checkpoint, synthetic

BACKBONE = "regnet_y_400mf"


@pytest.fixture(scope="module")
def regnet_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A RegNetY-400MF run on 64 px synthetic images, as ``tiny_run`` trains its ResNet-18; returns the checkpoint."""
    return fit_tiny(tmp_path_factory.mktemp("regnet-run"), backbone=BACKBONE)


@pytest.fixture(scope="module")
def regnet_onnx(regnet_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_command(regnet_run, tmp_path_factory.mktemp("regnet-export") / "regnet.onnx")


def test_a_regnet_trains_and_its_checkpoint_rebuilds_it(regnet_run: Path) -> None:
    state = checkpoint.load(regnet_run)
    assert state.model.backbone == BACKBONE and state.stage == checkpoint.FINISHED
    assert {"val_top1_gap", "val_top1_ca"} <= set(state.metrics)
    assert set(state.completed) == {"full", "stream"}  # random weights: the GAP baseline first, then the stream
    # torchvision's module tree under ``net``: its classifier ``fc`` reads the last stage's 440 channels.
    assert state.state_dict["backbone.net.fc.weight"].shape == (len(synthetic.CLASSES), 440)
    assert any(key.startswith("backbone.net.trunk_output.block4.") for key in state.state_dict)
    model = state.build_model()
    assert len(model.stream.blocks) == 5 and model.backbone.widths == (32, 48, 104, 208, 440)
    assert model.stream.blocks[0].proj.in_features == 32  # the stem is read too


@pytest.mark.slow  # ~20 s: tracing and checking the export
def test_a_regnet_exports_logits_attention_and_class_maps(regnet_run: Path, regnet_onnx: Path) -> None:
    props = metadata.read(regnet_onnx)
    assert (props["backbone"], props["model_name"]) == (BACKBONE, f"castream-{BACKBONE}-ca")
    state = checkpoint.load(regnet_run)
    images = load_samples(state, "val", 3, cache_dir=None).images
    names = ["logits", "attention", "class_maps"]
    logits, attention, maps = make_session(onnx.load(str(regnet_onnx))).run(names, {"image": images})
    assert logits.shape == (3, len(synthetic.CLASSES)) and np.isfinite(logits).all()
    assert attention.shape == (3, 2, 2) and (attention >= 0).all()
    np.testing.assert_allclose(attention.sum(axis=(1, 2)), 1.0, atol=1e-5)
    # A plain ``fc`` head: the maps plus the classifier's bias add up to the logits.
    bias = state.build_model().backbone.classifier.bias.detach().numpy()
    assert maps.shape == (3, len(synthetic.CLASSES), 2, 2)
    allowed = 1e-4 * max(1.0, float(np.abs(logits).max()))
    np.testing.assert_allclose(maps.sum(axis=(2, 3)) + bias, logits, rtol=0, atol=allowed)
    with torch.no_grad():
        expected = state.build_model().eval()(torch.from_numpy(images)).logits.numpy()
    np.testing.assert_allclose(logits, expected, rtol=0, atol=allowed)


@pytest.mark.slow
def test_the_service_serves_the_exported_regnet_as_onnx_runtime_runs_it(regnet_onnx: Path) -> None:
    rng = np.random.default_rng(0)
    images = [solid_png(tuple(int(v) for v in rng.integers(0, 255, 3)), size=(90, 70)) for _ in range(2)]
    info, model, grid = serve_and_compare(regnet_onnx, images)
    assert info["classes"] == list(model.classes) and info["pooling"] == "ca" and grid == (2, 2)


@pytest.mark.slow  # ~40 s
def test_the_evaluation_scores_a_regnet(regnet_run: Path, tmp_path: Path) -> None:
    evaluate_tiny(regnet_run, tmp_path)
