"""The sweeps' inputs, and both offline sweeps on a tiny model."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from benchmarks.scaling import batch_sweep, image_size_sweep, photo_jpeg


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
