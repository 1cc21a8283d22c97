"""The training loop's pieces: progressive resizing of the baseline, and stage plans."""

from __future__ import annotations

import torch

from training.engine import StageSettings, downscale
from training.pipeline import FitOptions, _plan


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
    assert (full_settings.small_size, full_settings.small_epochs) == (64, 3)  # 4/7 of 112 px
    ((probe, probe_settings), _) = _plan(FitOptions(data="/data", image_size=224), "probe")
    assert probe == "probe" and probe_settings.small_size is None
    ((_, capped), _) = _plan(FitOptions(baseline_epochs=2, baseline_small_epochs=5), "full")
    assert capped.small_epochs == 1  # at least one full-size epoch
    ((_, off), _) = _plan(FitOptions(baseline_small_epochs=0), "full")
    assert off.image_size(0) is None
