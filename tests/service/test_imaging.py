"""Decoding every accepted format and pixel mode to the RGB the model expects."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.errors import ServiceError
from service.imaging import decode, to_rgb
from tests.service.servicetools import COLOURS, orientation_exif

RED = COLOURS["red"]


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def red_in(mode: str, fmt: str) -> bytes:
    image = Image.new("RGB", (40, 48), RED)
    if mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode != "RGB":
        image = image.convert(mode)
    return encode(image, fmt)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("RGB", "JPEG"),
        ("RGB", "PNG"),
        ("RGB", "WEBP"),
        ("RGB", "BMP"),
        ("P", "GIF"),
        ("P", "PNG"),
        ("RGBA", "PNG"),
        ("RGBA", "WEBP"),
        ("CMYK", "JPEG"),
    ],
)
def test_colour_images_in_every_format_and_mode_keep_their_colour(client: TestClient, mode: str, fmt: str) -> None:
    data = red_in(mode, fmt)
    rgb = np.asarray(decode(data, 10**6))
    assert rgb.shape == (48, 40, 3)
    assert np.abs(rgb.astype(int) - RED).max() <= 12
    response = client.post("/classify", files=[("file", (f"red.{fmt.lower()}", data))])
    assert response.status_code == 200
    assert response.json()["predictions"][0]["top_k"][0]["label"] == "red"


@pytest.mark.parametrize("mode", ["L", "LA", "1", "I;16"])
def test_grey_and_16_bit_files_become_grey_rgb(mode: str) -> None:
    if mode == "I;16":
        image = Image.fromarray(np.full((20, 30), 200 * 257, np.uint16))  # 16-bit grey at 200/255
    else:
        image = Image.new("L", (30, 20), 200 if mode != "1" else 255).convert(mode)
    rgb = np.asarray(decode(encode(image, "PNG"), 10**6))
    expected = 255 if mode == "1" else 200
    assert rgb.shape == (20, 30, 3) and np.all(np.abs(rgb.astype(int) - expected) <= 1)


def test_32_bit_integer_mode_is_scaled_not_clipped() -> None:
    deep = Image.fromarray(np.full((4, 4), 100 * 257, np.int32))
    assert deep.mode == "I"
    assert np.all(np.asarray(to_rgb(deep)) == 100)
    shallow = Image.fromarray(np.full((4, 4), 100, np.int32))
    assert np.all(np.asarray(to_rgb(shallow)) == 100)


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    rotated = orientation_exif(6)  # display rotated 90 degrees clockwise
    rgb = np.asarray(decode(encode(image, "JPEG", exif=rotated, quality=95), 10**6))
    assert rgb.shape == (40, 20, 3)  # portrait after rotation
    assert rgb[2, 10, 0] > 200 and rgb[-3, 10, 2] > 200  # left half went to the top


def test_animated_gif_uses_its_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((250, 0, 0), (0, 0, 250))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    rgb = np.asarray(decode(data, 10**6))
    assert rgb[8, 8, 0] > 200 and rgb[8, 8, 2] < 50


def test_a_mode_without_an_rgb_conversion_is_refused_with_415() -> None:
    with pytest.raises(ServiceError) as error:
        to_rgb(Image.new("La", (2, 2)), "odd.png")
    assert (error.value.status, error.value.code) == (415, "unsupported_mode") and "'La'" in error.value.detail
