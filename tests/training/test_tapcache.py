"""Cached taps give the stream exactly the batches it would have seen, and are skipped where they cannot help."""

from __future__ import annotations

import pytest
import torch

from training.data import Batches, DataConfig, Preprocessing, SyntheticSource
from training.model import CAStreamNet, ModelConfig
from training.tapcache import CachedTaps, cache_taps


def _source(tmp_path) -> SyntheticSource:
    spec = DataConfig(image_size=32, train_count=20, val_count=10).synthetic_spec("train")
    return SyntheticSource(spec, Preprocessing(resize=32, crop=32), tmp_path)


def test_cached_batches_match_the_images_batches_in_order_and_content(tmp_path) -> None:
    torch.manual_seed(0)
    model = CAStreamNet(ModelConfig("resnet18", 10)).eval()
    images = Batches(_source(tmp_path), batch_size=6, shuffle=True, seed=3, rank=1, world=2)
    cached = cache_taps(model, images, torch.device("cpu"), None, budget_bytes=1 << 30)
    assert cached is not None and len(cached) == len(images)
    for epoch in (0, 1):
        images.set_epoch(epoch)
        cached.set_epoch(epoch)
        for (x, labels), (taps, cached_labels) in zip(images, cached, strict=True):
            assert torch.equal(labels, cached_labels)
            with torch.no_grad():
                expected = model.forward_features(x)
            for got, want in zip(taps, expected, strict=True):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_no_cache_beyond_the_memory_budget_or_for_random_inputs(tmp_path) -> None:
    model = CAStreamNet(ModelConfig("resnet18", 10)).eval()
    images = Batches(_source(tmp_path), batch_size=6, shuffle=False, seed=0)
    assert cache_taps(model, images, torch.device("cpu"), None, budget_bytes=1000) is None

    class Augmented:
        deterministic = False

    assert cache_taps(model, Batches(Augmented(), 6, False, 0), torch.device("cpu"), None, budget_bytes=1 << 30) is None


def test_cached_taps_refuse_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="4 labels"):
        CachedTaps([torch.zeros(3, 2, 1, 1)], torch.zeros(4, dtype=torch.long))
