"""A colour JPEG is decoded by libjpeg-turbo straight into an array: the very pixels Pillow's decoder gives."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from service import imaging
from service.errors import ServiceError
from service.imaging import JpegHeader, _jpeg_pixels, _rgb_image, decode_reduced, jpeg_header, open_image
from tests.service.servicetools import orientation_exif


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Colour fields, edges and grain: every kind of DCT block a photo has."""
    rng = np.random.default_rng(seed)
    fields = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(fields).astype(np.int16) + rng.normal(0, 12, (height, width, 3)).astype(np.int16)
    pixels[height // 3 : height // 2, width // 4 :: 7] = 255  # hard edges
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", **{"quality": 90, **options})
    return out.getvalue()


def pillows(data: bytes, scale: int) -> np.ndarray:
    """What Pillow's own decoder gives at ``1/scale``, as the service decoded every JPEG before."""
    image = Image.open(io.BytesIO(data))
    if scale > 1:
        image.draft(None, (image.width // scale, image.height // scale))
    return np.asarray(image.convert("RGB"))


VARIANTS = {
    "4:2:0": {"subsampling": 2},
    "4:2:2": {"subsampling": 1},
    "4:4:4": {"subsampling": 0},
    "progressive": {"progressive": True},
    "optimised tables": {"optimize": True},
    "restart markers": {"restart_marker_rows": 1},
    "low quality": {"quality": 20},
}


SIZES = [(451, 300), (1001, 997), (37, 61)]
SCALES = [1, 2, 4, 8]
# libjpeg-turbo picks its kernels by what the CPU has (AVX2 at best); these variables hold it to less.
SIMD_LIMITS = {"SSE2": "JSIMD_FORCESSE2", "no SIMD": "JSIMD_FORCENONE"}
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("width", "height"), SIZES)
@pytest.mark.parametrize("scale", SCALES)
def test_the_direct_decode_gives_pillows_pixels(variant: str, width: int, height: int, scale: int) -> None:
    data = jpeg(photo(width, height), **VARIANTS[variant])
    header = open_image(data, 10**8)
    assert isinstance(header, JpegHeader), "a colour JPEG's header is read without Pillow"
    direct = _jpeg_pixels(header.size, data, scale)
    assert direct is not None, "a colour JPEG must take the direct path"
    expected = pillows(data, scale)
    assert direct.shape == (*expected.shape[:2], 4) and expected.shape == (-(-height // scale), -(-width // scale), 3)
    image = _rgb_image(direct)
    assert image.mode == "RGB" and image.size == (expected.shape[1], expected.shape[0])
    assert np.array_equal(np.asarray(image), expected)


def test_the_decoded_pixels_become_an_image_without_a_copy_and_stay_its_own() -> None:
    # The mapping is Pillow's internal: this fails, rather than the service slowing down unnoticed, if a Pillow
    # release stops mapping RGBX as RGB (the copy is then taken, with the same pixels).
    assert _rgb_image is imaging._mapped_rgb
    pixels = _jpeg_pixels((64, 48), jpeg(photo(64, 48)), 1)
    assert pixels is not None
    mapped, copied = imaging._mapped_rgb(pixels), imaging._copied_rgb(pixels)
    assert np.array_equal(np.asarray(mapped), np.asarray(copied)) and copied.mode == "RGB"
    before = pixels.copy()
    mapped.paste((255, 0, 0), (0, 0, 8, 8))  # an in-place change copies the image first
    assert np.array_equal(pixels, before) and np.asarray(mapped)[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize("limit", SIMD_LIMITS)
def test_the_pixels_stay_pillows_on_a_cpu_with_less_simd(limit: str) -> None:
    # Both decoders bundle libjpeg-turbo; on an older CPU both take its slower kernels, and must still agree.
    script = (
        "import itertools, tests.service.test_jpeg_decode as t\n"
        "cases = list(itertools.product(t.VARIANTS, t.SIZES, t.SCALES))\n"
        "for variant, (width, height), scale in cases:\n"
        "    t.test_the_direct_decode_gives_pillows_pixels(variant, width, height, scale)\n"
        "print(len(cases))"
    )
    env = {**os.environ, SIMD_LIMITS[limit]: "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [str(len(VARIANTS) * len(SIZES) * len(SCALES))]


def test_the_service_decode_of_a_colour_jpeg_is_the_direct_one_turned_upright() -> None:
    data = jpeg(photo(800, 600), exif=orientation_exif(6))
    decoded = decode_reduced(data, 10**8, min_side=150)  # 1/4 of 600 is 150
    assert decoded.size == (600, 800)  # upright
    expected = np.asarray(Image.fromarray(pillows(data, 4)).transpose(Image.Transpose.ROTATE_270))
    assert np.array_equal(np.asarray(decoded.image), expected)


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grey_and_cmyk_jpegs_are_left_to_pillow(mode: str) -> None:
    data = jpeg(photo(64, 48).convert(mode))
    assert jpeg_header(data) is None and isinstance(open_image(data, 10**8), Image.Image)
    decoded = decode_reduced(data, 10**8)
    assert decoded.image.mode == "RGB"
    assert np.array_equal(np.asarray(decoded.image), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_a_camera_mpo_is_decoded_as_its_first_picture_at_reduced_scale() -> None:
    first, second = photo(1600, 1200, seed=1), photo(1600, 1200, seed=2)
    out = io.BytesIO()
    first.save(out, "MPO", save_all=True, append_images=[second], quality=90)
    data = out.getvalue()
    assert Image.open(io.BytesIO(data)).format == "MPO"
    decoded = decode_reduced(data, 10**8, min_side=300)
    assert decoded.image.size == (400, 300)
    assert np.array_equal(np.asarray(decoded.image), pillows(jpeg(first), 4))


def test_a_truncated_jpeg_is_refused_as_before() -> None:
    data = jpeg(photo(451, 300))
    with pytest.raises(ServiceError) as caught:
        decode_reduced(data[: len(data) // 2], 10**8)
    assert (caught.value.status, caught.value.code) == (400, "corrupt_image")


def test_a_jpeg_libjpeg_warns_about_is_decoded_as_pillow_decodes_it() -> None:
    data = jpeg(photo(120, 80))
    start_of_scan = data.index(b"\xff\xda")
    warned = data[:start_of_scan] + b"\x00\x00\x00" + data[start_of_scan:]  # extraneous bytes before a marker
    assert _jpeg_pixels((120, 80), warned, 1) is None  # libjpeg-turbo's warning: Pillow decides
    assert np.array_equal(np.asarray(decode_reduced(warned, 10**8).image), pillows(warned, 1))


def exif_block(orientation: int, order: str = "II", extra: int = 0, kind: int = 3) -> bytes:
    """An EXIF block written by hand, in either byte order: ``extra`` tags before the orientation, one value of TIFF
    type ``kind``."""
    endian = "little" if order == "II" else "big"

    def num(value: int, size: int) -> bytes:
        return value.to_bytes(size, endian)

    entries = [num(0x010F + i, 2) + num(2, 2) + num(1, 4) + b"\x00" * 4 for i in range(extra)]
    value = num(orientation, 2) + b"\x00\x00" if kind == 3 else num(orientation, 4)
    entries.append(num(0x0112, 2) + num(kind, 2) + num(1, 4) + value)
    directory = num(len(entries), 2) + b"".join(entries) + num(0, 4)
    return b"Exif\x00\x00" + order.encode() + num(42, 2) + num(8, 4) + directory


def with_segment(data: bytes, marker: int, body: bytes) -> bytes:
    """``data`` with an APPn segment inserted right after its start marker."""
    return data[:2] + bytes([0xFF, marker]) + (len(body) + 2).to_bytes(2, "big") + body + data[2:]


HEADER_CASES = {
    "plain": lambda d: d,
    "EXIF II, upright": lambda d: with_segment(d, 0xE1, exif_block(1)),
    "EXIF MM, quarter turn": lambda d: with_segment(d, 0xE1, exif_block(6, "MM", extra=3)),
    "EXIF II, mirrored": lambda d: with_segment(d, 0xE1, exif_block(5, "II", extra=1)),
    "EXIF without orientation": lambda d: with_segment(d, 0xE1, orientation_exif(None)),
    "EXIF, orientation as LONG": lambda d: with_segment(d, 0xE1, exif_block(3, kind=4)),
    "two EXIF blocks": lambda d: with_segment(with_segment(d, 0xE1, exif_block(7)), 0xE1, exif_block(2, "MM")),
    "XMP orientation": lambda d: with_segment(d, 0xE1, b'http://ns.adobe.com/xap/1.0/\x00<x tiff:Orientation="6"/>'),
    "comment and APP15": lambda d: with_segment(with_segment(d, 0xFE, b"hello"), 0xEF, b"\x00" * 300),
    "progressive": lambda d: jpeg(photo(300, 200), progressive=True),
    "grey": lambda d: jpeg(photo(300, 200).convert("L")),
    "CMYK": lambda d: jpeg(photo(300, 200).convert("CMYK")),
    "fill bytes before a marker": lambda d: d[:2] + b"\xff" + d[2:],
    "truncated header": lambda d: d[: d.index(b"\xff\xda") - 5],
    "a PNG": lambda d: encode_png(photo(30, 20)),
}


def encode_png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("case", HEADER_CASES)
def test_the_header_read_without_pillow_is_what_pillow_reads_or_left_to_it(case: str) -> None:
    data = HEADER_CASES[case](jpeg(photo(300, 200)))
    header = jpeg_header(data)
    # A multipart file arrives as a view into the request's body: read the same.
    assert jpeg_header(memoryview(b"--" + data + b"\r\n")[2:-2]) == header
    left = {"EXIF, orientation as LONG", "XMP orientation", "grey", "CMYK", "fill bytes before a marker",
            "truncated header", "a PNG"}  # fmt: skip
    assert (header is None) == (case in left)
    if header is None:  # then Pillow opens it, exactly as before
        return
    pillow = Image.open(io.BytesIO(data))
    assert pillow.mode == "RGB"
    assert header.size == pillow.size
    assert header.orientation == pillow.getexif().get(0x0112)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_read_from_the_header_turns_the_image_as_pillow_does(orientation: int) -> None:
    data = jpeg(photo(320, 240), exif=orientation_exif(orientation))
    header = open_image(data, 10**8)
    assert isinstance(header, JpegHeader) and header.orientation == orientation
    decoded = decode_reduced(data, 10**8)
    pillow = Image.open(io.BytesIO(data))
    upright = ImageOps.exif_transpose(pillow.convert("RGB"))
    assert decoded.size == upright.size
    assert np.array_equal(np.asarray(decoded.image), np.asarray(upright))
    viewed = decode_reduced(memoryview(data), 10**8)
    assert viewed.size == upright.size and np.array_equal(np.asarray(viewed.image), np.asarray(upright))


def test_a_jpeg_over_the_pixel_limit_is_refused_before_any_pixel_is_decoded() -> None:
    data = jpeg(photo(300, 200))
    with pytest.raises(ServiceError) as caught:
        open_image(data, 300 * 200 - 1)
    assert (caught.value.status, caught.value.code) == (413, "too_many_pixels")
    assert "300x200 = 60000 pixels" in caught.value.detail


def test_a_pillow_that_does_not_map_rgbx_as_rgb_gets_the_copy_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*args: object) -> None:
        raise ValueError("unknown raw mode")

    monkeypatch.setattr(Image.core, "map_buffer", refuse)
    with caplog.at_level("WARNING", logger="service.imaging"):
        assert imaging._chosen_rgb() is imaging._copied_rgb
    assert "does not map RGBX pixels as an RGB image (ValueError('unknown raw mode'))" in caplog.text
