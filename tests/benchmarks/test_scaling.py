"""The sweeps' timing loop and inputs, and both offline sweeps on a tiny model."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from benchmarks.scaling import batch_sweep, image_size_sweep, interleaved, photo_jpeg, summarise


def test_interleaved_alternates_the_order_and_keeps_to_the_rounds() -> None:
    calls: list[str] = []
    seconds = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, budget_s=0, min_rounds=3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert {key: len(values) for key, values in seconds.items()} == {"a": 3, "b": 3}
    calls.clear()
    interleaved({"a": lambda: calls.append("a")}, budget_s=60, min_rounds=1, max_rounds=2)
    assert calls == ["a", "a"]
    with pytest.raises(ValueError, match="min_rounds"):
        interleaved({"a": lambda: None}, budget_s=0, min_rounds=3, max_rounds=2)
    with pytest.raises(ValueError, match="no steps"):
        interleaved({}, budget_s=0)


def test_summarise_reports_the_median() -> None:
    summary = summarise(np.array([0.03, 0.01, 0.02]), images=4)
    assert summary["rounds"] == 3 and summary["p50_ms"] == pytest.approx(20.0)
    assert summary["images_per_second"] == pytest.approx(200.0)
    assert 20.0 < summary["p99_ms"] <= 30.0


@pytest.mark.parametrize("megapixels", [0.3, 1.0])
def test_photo_jpeg_has_the_requested_size(megapixels: float) -> None:
    data, width, height = photo_jpeg(megapixels)
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and image.size == (width, height)
    assert width * height == pytest.approx(megapixels * 1e6, rel=0.01) and width / height == pytest.approx(4 / 3, 0.01)


def test_batch_sweep_times_every_size(tiny_model) -> None:
    points = batch_sweep(tiny_model, sizes=(1, 4), budget_s=0)
    assert [p["batch_size"] for p in points] == [1, 4]
    for point in points:
        assert point["rounds"] == 3 and 0 < point["p50_ms"] <= point["p99_ms"]
        assert point["images_per_second"] == pytest.approx(point["batch_size"] / point["p50_ms"] * 1000)


def test_image_size_sweep_decodes_and_preprocesses_each_size(tiny_model) -> None:
    points = image_size_sweep(tiny_model, megapixels=(0.02, 0.08), budget_s=0)
    assert [p["megapixels"] for p in points] == [0.02, 0.08]
    assert points[0]["jpeg_bytes"] < points[1]["jpeg_bytes"]
    for point in points:
        assert point["decode_ms"] > 0 and point["preprocess_ms"] > 0
        assert point["total_ms"] == pytest.approx(point["decode_ms"] + point["preprocess_ms"])
