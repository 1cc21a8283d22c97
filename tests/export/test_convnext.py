"""A ConvNeXt exports too: random weights at 64 px, checked like any export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export import metadata
from export.pipeline import ExportOptions, export_checkpoint
from export.samples import load_samples
from export.sessions import make_session
from training import checkpoint, synthetic
from training.data import DataConfig, Preprocessing
from training.model import CAStreamNet, ModelConfig


@pytest.fixture(scope="module")
def convnext_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = CAStreamNet(ModelConfig("convnext_tiny", len(synthetic.CLASSES))).eval()
    data = DataConfig(kind="synthetic", image_size=64, train_count=32, val_count=16, seed=3)
    record = checkpoint.Checkpoint(
        model=model.config,
        state_dict=model.state_dict(),
        classes=tuple(synthetic.CLASSES),
        preprocessing=Preprocessing(resize=64, crop=64),
        data=data,
        metrics={"val_top1_gap": 10.0, "val_top1_ca": 12.5},
    )
    return checkpoint.save(record, tmp_path_factory.mktemp("convnext") / "castream.pt")


@pytest.mark.slow  # ~40 s: tracing ConvNeXt's 18 blocks dominates
def test_convnext_exports_logits_attention_and_class_maps(convnext_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "convnext.onnx"
    report = export_checkpoint(ExportOptions(checkpoint=str(convnext_checkpoint), out=str(out), verify_images=16))
    assert [p.batch_size for p in report.parity] == [1, 8]
    state = checkpoint.load(convnext_checkpoint)
    session = make_session(onnx.load(str(out)))
    images = load_samples(state, "val", 3, cache_dir=None).images
    logits, attention, maps = session.run(["logits", "attention", "class_maps"], {"image": images})
    assert logits.shape == (3, len(synthetic.CLASSES)) and np.isfinite(logits).all()
    # LayerNorm head: the maps plus its constant (classifier of the norm's bias) still add up to the logits.
    net = state.build_model()
    norm, linear = net.backbone.head[0], net.backbone.classifier
    constant = (linear.weight @ norm.bias + linear.bias).detach().numpy()
    assert maps.shape == (3, len(synthetic.CLASSES), 2, 2)
    allowed = 1e-4 * max(1.0, float(np.abs(logits).max()))
    np.testing.assert_allclose(maps.sum(axis=(2, 3)) + constant, logits, rtol=0, atol=allowed)
    assert all("class_maps" in p.errors for p in report.parity)
    assert attention.shape == (3, 2, 2) and (attention >= 0).all()
    np.testing.assert_allclose(attention.sum(axis=(1, 2)), 1.0, atol=1e-5)
    props = metadata.read(out)
    assert (props["backbone"], props["val_top1"], props["model_name"]) == (
        "convnext_tiny",
        "12.5",
        "castream-convnext_tiny-ca",
    )
