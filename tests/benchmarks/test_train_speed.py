"""The training benchmark's steps do what the stream stage does: only the stream learns."""

from __future__ import annotations

import pytest
import torch

from benchmarks.train_speed import run, steps
from training.engine import TrainingContext
from training.model import CAStreamNet, ModelConfig


def test_forward_changes_nothing_and_a_step_trains_only_the_stream() -> None:
    torch.manual_seed(0)
    model = CAStreamNet(ModelConfig("resnet18", 4))
    images, labels = torch.randn(2, 3, 64, 64), torch.tensor([0, 3])  # every tap has several positions
    context = TrainingContext(device=torch.device("cpu"), precision="fp32", progress=False)
    forward, train_step = steps(model, context, images, labels)
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}  # weights and BatchNorm buffers
    stream = {k: v.clone() for k, v in model.stream.state_dict().items()}
    forward()
    assert all(torch.equal(v, model.stream.state_dict()[k]) for k, v in stream.items())
    train_step()
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in backbone.items())
    changed = [k for k, v in stream.items() if not torch.equal(v, model.stream.state_dict()[k])]
    assert "token" in changed and len(changed) == len(stream)


def test_run_reports_both_throughputs_and_their_ratio() -> None:
    result = run("resnet18", image_size=32, batch_size=2, budget_s=0, precision="fp32", num_classes=4)
    assert result["rounds"] == 3 and result["ratio"] > 0 and result["threads"] >= 1
    for step in ("forward", "train"):
        assert result[step]["images_per_second"] == pytest.approx(2 / (result[step]["p50_ms"] / 1000))
    with pytest.raises(ValueError, match="batch_size"):
        run("resnet18", batch_size=0)
