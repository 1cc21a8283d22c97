"""Per-stage timings (decode, preprocess, response encoding) and the overlay PNG's compression level."""

from __future__ import annotations

import base64
import io
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service import overlay
from service.overlay import heat_overlay
from service.settings import SettingsError, load_settings
from tests.service.servicetools import COLOURS, solid_png


def classify(client: TestClient, *images: bytes, **params: object):
    files = [("file", (f"img{i}.png", data, "image/png")) for i, data in enumerate(images)]
    return client.post("/classify", files=files, params=params)


def histogram_counts(client: TestClient) -> dict[tuple[str, tuple], float]:
    """``{(histogram, label items): observation count}`` from ``GET /metrics``."""
    counts = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name.endswith("_count"):
                counts[(sample.name.removesuffix("_count"), tuple(sorted(sample.labels.items())))] = sample.value
    return counts


def test_each_stage_is_timed_per_image_and_encoding_per_request(client: TestClient) -> None:
    assert classify(client, solid_png(COLOURS["red"]), solid_png(COLOURS["blue"])).status_code == 200
    assert classify(client, solid_png(COLOURS["green"]), attention="overlay").status_code == 200
    assert classify(client, solid_png(COLOURS["dark"]), attention="none").status_code == 200
    counts = histogram_counts(client)
    assert counts[("castream_decode_duration_seconds", ())] == 4
    assert counts[("castream_preprocess_duration_seconds", ())] == 4
    encode = "castream_encode_duration_seconds"
    assert counts[(encode, (("attention", "grid"),))] == 1  # one request of two images
    assert counts[(encode, (("attention", "overlay"),))] == 1
    assert counts[(encode, (("attention", "none"),))] == 1


def test_a_refused_image_is_not_counted_as_preprocessed(client: TestClient) -> None:
    assert classify(client, b"not an image").status_code == 415
    counts = histogram_counts(client)
    assert counts.get(("castream_preprocess_duration_seconds", ()), 0) == 0
    assert sum(value for (name, _), value in counts.items() if name == "castream_encode_duration_seconds") == 0


def overlay_png(client: TestClient) -> bytes:
    body = classify(client, solid_png(COLOURS["red"], size=(64, 48)), attention="overlay").json()
    return base64.b64decode(body["predictions"][0]["attention"]["overlay_png"])


def test_png_level_setting_changes_the_size_not_the_pixels(app_client) -> None:
    stored, smallest = overlay_png(app_client(overlay_png_level=0)), overlay_png(app_client(overlay_png_level=9))
    pixels = [np.asarray(Image.open(io.BytesIO(png))) for png in (stored, smallest)]
    assert pixels[0].shape == (224, 224, 3)  # the 32 px crop, upscaled for visibility
    np.testing.assert_array_equal(pixels[0], pixels[1])
    assert len(stored) > pixels[0].nbytes > len(smallest)  # level 0 stores the rows uncompressed


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_overlay_pixels_do_not_depend_on_the_level(level: int) -> None:
    rng = np.random.default_rng(level)
    view = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    attention = rng.random((2, 3)).astype(np.float32)
    reference = np.asarray(Image.open(io.BytesIO(heat_overlay(view, attention, png_level=6))))
    decoded = np.asarray(Image.open(io.BytesIO(heat_overlay(view, attention, png_level=level))))
    np.testing.assert_array_equal(decoded, reference)


def test_fast_levels_deflate_with_isal_and_write_the_same_pixels(monkeypatch) -> None:
    """Levels 1-3 go through ISA-L (a serving dependency), and its PNG holds the pixels zlib's does, in fewer bytes
    than zlib's level 1 on a photo-like overlay."""
    assert overlay.isal_zlib is not None, "the serving extras install isal"
    assert [overlay.deflater(level).__name__ for level in (0, 1, 3, 4, 9)] == [
        "zlib", "isal.isal_zlib", "isal.isal_zlib", "zlib", "zlib",
    ]  # fmt: skip
    y, x = np.mgrid[0:240, 0:320]
    waves = np.stack([127 + 100 * np.sin(x / (20 + 9 * c) + y / 31) for c in range(3)], axis=-1)
    noise = np.random.default_rng(0).normal(0, 3, waves.shape)
    image = Image.fromarray(np.clip(waves + noise, 0, 255).astype(np.uint8))
    fast = overlay.encoded(image, "png", 1)
    monkeypatch.setattr(overlay, "FAST_LEVELS", range(0))  # level 1 as the service wrote it before: zlib's
    with_zlib = overlay.encoded(image, "png", 1)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(fast))), np.asarray(image))
    assert zlib.decompress(_idat(fast)) == zlib.decompress(_idat(with_zlib))  # the same filtered rows
    assert len(fast) < len(with_zlib)


def test_png_without_isal_falls_back_to_zlib(monkeypatch) -> None:
    monkeypatch.setattr(overlay, "isal_zlib", None)
    assert overlay.deflater(1) is zlib
    view = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    png = overlay.encoded(Image.fromarray(view), "png", 1)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), view)


def _idat(png: bytes) -> bytes:
    """The one IDAT chunk's data of a PNG that ``overlay`` wrote."""
    start = png.index(b"IDAT")
    length = int.from_bytes(png[start - 4 : start], "big")
    return png[start + 4 : start + 4 + length]


def test_png_level_out_of_range_names_the_variable(model_path) -> None:
    with pytest.raises(SettingsError, match="CASTREAM_OVERLAY_PNG_LEVEL=10"):
        load_settings(model_path=model_path, overlay_png_level=10)
