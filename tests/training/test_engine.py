"""The training loop's stages: what each one trains, and a backbone that stays frozen for real in the stream stage."""

from __future__ import annotations

import pytest
import torch

from training.engine import Objective, StageSettings, TrainingContext, downscale, trainable_parameters
from training.model import CAStreamNet, ModelConfig
from training.pipeline import FitOptions, _plan


def _train_steps(model: CAStreamNet, stage: str, steps: int = 3) -> torch.optim.Optimizer:
    params = trainable_parameters(model, stage)
    objective = Objective(model, stage, TrainingContext(torch.device("cpu"), precision="fp32"))
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    for step in range(steps):
        x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(step))
        loss = torch.nn.functional.cross_entropy(objective(x), torch.tensor([0, 1, 2, 3]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return optimizer


@pytest.mark.parametrize("name", ["resnet18", "convnext_tiny"])
def test_stream_training_leaves_the_backbone_frozen(name: str) -> None:
    torch.manual_seed(0)
    model = CAStreamNet(ModelConfig(name, num_classes=4))
    before_params = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    params = trainable_parameters(model, "stream")
    objective = Objective(model, "stream", TrainingContext(torch.device("cpu"), precision="fp32"))
    loss = torch.nn.functional.cross_entropy(objective(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    stream_ids = {id(p) for p in model.stream.parameters()}
    assert {id(p) for p in params} == stream_ids
    for pname, param in model.stream.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"stream parameter {pname} got no gradient"
    for pname, param in model.backbone.named_parameters():
        assert param.grad is None, f"frozen parameter {pname} received a gradient"
    assert not model.backbone.training
    _train_steps(model, "stream")
    after = model.backbone.state_dict()
    for key, value in before_params.items():
        assert torch.equal(value, after[key]), f"backbone entry {key} changed during stream training"


def test_full_baseline_trains_the_backbone_and_its_batchnorm() -> None:
    torch.manual_seed(0)
    model = CAStreamNet(ModelConfig("resnet18", num_classes=4))
    stream_before = {k: v.clone() for k, v in model.stream.state_dict().items()}
    running_before = model.backbone.net.bn1.running_mean.clone()
    _train_steps(model, "full", steps=1)
    assert not torch.equal(running_before, model.backbone.net.bn1.running_mean)
    for key, value in model.stream.state_dict().items():
        assert torch.equal(value, stream_before[key])


def test_probe_trains_only_the_classifier() -> None:
    torch.manual_seed(0)
    model = CAStreamNet(ModelConfig("resnet18", num_classes=4))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    _train_steps(model, "probe", steps=2)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, state[k])}
    assert changed == {"backbone.net.fc.weight", "backbone.net.fc.bias"}


def test_downscale_keeps_the_aspect_ratio_and_never_upscales() -> None:
    images = torch.randn(2, 3, 112, 168)
    small = downscale(images, 64)
    assert small.shape == (2, 3, 64, 96)
    assert small.is_contiguous(memory_format=torch.channels_last)
    assert downscale(images, 112) is images
    torch.testing.assert_close(downscale(torch.ones(1, 3, 112, 112), 64), torch.ones(1, 3, 64, 64))


def test_small_epochs_come_first_and_the_last_epoch_is_full_size() -> None:
    settings = StageSettings(epochs=5, lr=1e-3, small_size=64, small_epochs=3)
    assert [settings.image_size(e) for e in range(5)] == [64, 64, 64, None, None]
    assert StageSettings(epochs=2, lr=1e-3).image_size(0) is None


def test_the_default_plan_resizes_only_an_end_to_end_baseline() -> None:
    (full, full_settings), (stream, _) = _plan(FitOptions(), "full")
    assert (full, stream) == ("full", "stream")
    assert (full_settings.small_size, full_settings.small_epochs) == (64, 5)  # 4/7 of 112 px, then full size
    ((probe, probe_settings), _) = _plan(FitOptions(data="/data", image_size=224), "probe")
    assert probe == "probe" and probe_settings.small_size is None
    ((_, capped), _) = _plan(FitOptions(baseline_epochs=2, baseline_small_epochs=5), "full")
    assert capped.small_epochs == 1  # at least one full-size epoch
    ((_, off), _) = _plan(FitOptions(baseline_small_epochs=0), "full")
    assert off.image_size(0) is None
