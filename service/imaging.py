"""Decoding uploaded bytes into an RGB Pillow image, refusing what is not safe or not an image.

A model sees a few hundred pixels of a photo that may hold twelve million, so an image is decoded only at the scale
it is needed: a JPEG through libjpeg's DCT scaling (1/2, 1/4 or 1/8 of each side, decided before any pixel is
decoded), any other format in full and then reduced by an integer box filter. A colour JPEG is decoded by
libjpeg-turbo straight into an array (simplejpeg), with the same pixels as Pillow's decoder and without its fixed
cost per image (0.09 against 0.25 ms for a 128 px photo on a 2-core Xeon), and that array becomes the Pillow image
without a copy (docs/service.md). Either way the result keeps a margin over the size asked for (see
:func:`reduction`), so the resize that follows still antialiases as it would from the full image; docs/service.md
states the parity with the full decode.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError
from PIL import __version__ as PIL_VERSION

from service.errors import ServiceError

log = logging.getLogger(__name__)

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError)
_ORIENTATION = 0x0112  # the EXIF tag
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_JPEGS = ("JPEG", "MPO")  # MPO: a camera's JPEG followed by more pictures, of which the first is the photo
JPEG_SCALES = (8, 4, 2, 1)  # the reductions libjpeg decodes directly
# How many times the model's resize target a reduced decode keeps on its shorter side, at least: chosen by
# measurement of parity and time (``python -m benchmarks decode_parity``; docs/service.md has the figures).
DECODE_MARGIN = 3.0
DISPLAY_SLACK = 0.95  # a display image may be enlarged by up to 5 % rather than decoded at twice the size
_HUFFMAN_FRAMES = (0xC0, 0xC1, 0xC2)  # baseline, extended and progressive: the frames libjpeg-turbo decodes
_OTHER_FRAMES = (0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"


@dataclass(frozen=True)
class Decoded:
    """An upright RGB ``image``, possibly reduced, and ``size``: the whole image's upright (width, height)."""

    image: Image.Image
    size: tuple[int, int]


@dataclass(frozen=True)
class JpegHeader:
    """A colour JPEG's header, read without Pillow: its stored ``size`` (width, height) and EXIF ``orientation``."""

    size: tuple[int, int]
    orientation: int | None

    @property
    def width(self) -> int:
        return self.size[0]

    @property
    def height(self) -> int:
        return self.size[1]


Opened = Image.Image | JpegHeader  # what open_image gives: no pixel decoded yet


def jpeg_header(data: bytes | memoryview) -> JpegHeader | None:
    """The header of a plain colour JPEG (8 bits, 3 components, Huffman-coded, its orientation if any in its first
    EXIF block and no XMP, which may hold one too), from its markers up to the first scan; None for anything else,
    which Pillow then opens as it always has. A few microseconds, where Pillow's ``open`` and ``getexif`` take 20."""
    if data[:2] != b"\xff\xd8":
        return None
    size, exif, at = None, None, 2
    while True:
        if len(data) < at + 4 or data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xDA:  # the first scan: the header is complete
            break
        end = at + 2 + int.from_bytes(data[at + 2 : at + 4], "big")
        if end <= at + 3 or end > len(data) or marker in _OTHER_FRAMES or 0xD0 <= marker <= 0xD9 or marker == 0x01:
            return None
        if marker in _HUFFMAN_FRAMES:  # only the segments read are copied (an ICC profile may be 64 KB)
            frame = data[at + 4 : end]
            if size is not None or len(frame) < 6 or frame[0] != 8 or frame[5] != 3:
                return None
            size = (int.from_bytes(frame[3:5], "big"), int.from_bytes(frame[1:3], "big"))
        elif marker == 0xE1 and _begins(data, _XMP, at + 4, end):
            return None
        elif marker == 0xE1 and _begins(data, b"Exif\x00\x00", at + 4, end) and exif is None:
            exif = data[at + 10 : end]
        at = end
    if size is None or 0 in size:
        return None
    orientation = _exif_orientation(exif) if exif is not None else None
    return None if orientation == -1 else JpegHeader(size, orientation)


def _begins(data: bytes | memoryview, prefix: bytes, start: int, end: int) -> bool:
    """``data.startswith(prefix, start, end)``, for a memoryview too."""
    return end - start >= len(prefix) and data[start : start + len(prefix)] == prefix


def _exif_orientation(tiff: bytes | memoryview) -> int | None:
    """The orientation tag of an EXIF block's first directory (None: there is none; -1: the block is not one this
    reads exactly as Pillow does)."""
    order = {b"II": "little", b"MM": "big"}.get(bytes(tiff[:2]))
    if order is None or len(tiff) < 8:
        return -1

    def number(at: int, size: int) -> int:
        return int.from_bytes(tiff[at : at + size], order)  # type: ignore[arg-type]

    directory = number(4, 4)
    if number(2, 2) != 42 or directory < 8 or directory + 2 > len(tiff):
        return -1
    entries = range(directory + 2, directory + 2 + 12 * number(directory, 2), 12)
    if entries.stop > len(tiff):
        return -1
    found = [at for at in entries if number(at, 2) == _ORIENTATION]
    if not found:
        return None
    at = found[0]
    if len(found) > 1 or number(at + 2, 2) != 3 or number(at + 4, 4) != 1:  # one SHORT
        return -1
    return number(at + 8, 2)


def decode(data: bytes, max_pixels: int, name: str = "image") -> Image.Image:
    """Open ``data`` (first frame), check its size before decoding pixels, apply EXIF rotation, return RGB."""
    return decode_reduced(data, max_pixels, name=name).image


def reduction(size: tuple[int, int], min_side: int = 0, long_side: int = 0) -> int:
    """The largest integer factor that keeps an image of ``size`` at least ``min_side`` on its shorter side and
    about ``long_side`` on its longer side (0: no need); 1 when the image is not larger than that.

    ``long_side`` is a display size, which may be reached by enlarging a little (``DISPLAY_SLACK``): a 4032 px
    photo is then decoded at a quarter (1008 px) for a 1024 px overlay, not at half its size.
    """
    short, long = min(size), max(size)
    need = max(min_side, math.ceil(long_side * DISPLAY_SLACK * short / long) if long_side else 0)
    return max(1, short // need) if need > 0 else 1


def open_image(data: bytes | memoryview, max_pixels: int, name: str = "image") -> Opened:
    """Read ``data``'s header only (no pixel is decoded): a supported format within ``max_pixels``, else the
    :class:`ServiceError` that says what is wrong. Cheap enough for the event loop."""
    header = jpeg_header(data)
    if header is not None and header.width * header.height <= min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels):
        return header
    return _pillow_open(data, max_pixels, name)


def _pillow_open(data: bytes | memoryview, max_pixels: int, name: str) -> Image.Image:
    if not data:
        raise ServiceError(400, "empty_image", f"{name} is empty (0 bytes); send the image file's bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise ServiceError(
            415, "unsupported_image", f"{name} is not a {', '.join(FORMATS)} image ({len(data)} bytes)"
        ) from None
    except Image.DecompressionBombError as exc:
        raise ServiceError(413, "too_many_pixels", f"{name}: {exc}") from None
    except _DECODE_ERRORS as exc:
        raise ServiceError(400, "corrupt_image", f"{name} cannot be read: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ServiceError(
            413,
            "too_many_pixels",
            f"{name} is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
            "(CASTREAM_MAX_IMAGE_PIXELS); downscale it before sending",
        )
    return image


def decode_reduced(
    data: bytes | memoryview, max_pixels: int, min_side: int = 0, long_side: int = 0, name: str = "image"
) -> Decoded:
    """Like :func:`decode`, at the smallest scale whose shorter side is at least ``min_side`` pixels and whose
    longer side at least ``long_side`` (0, 0: the full image). The limits apply to the full image."""
    return decode_opened(open_image(data, max_pixels, name), data, min_side, long_side, name)


def decode_opened(
    image: Opened, data: bytes | memoryview, min_side: int = 0, long_side: int = 0, name: str = "image"
) -> Decoded:
    """The pixels of an image :func:`open_image` opened from ``data``, reduced as :func:`decode_reduced` says."""
    factor = reduction(image.size, min_side, long_side)
    scale = next(s for s in JPEG_SCALES if s <= factor)  # for a JPEG, libjpeg does the reduction
    if isinstance(image, JpegHeader):
        pixels = _jpeg_pixels(image.size, data, scale, display_eighths(image.size, scale, min_side, long_side))
        if pixels is not None:
            return _upright(_rgb_image(pixels), image.size, image.orientation)
        image = _pillow_open(data, image.width * image.height, name)  # libjpeg-turbo warned: Pillow decides
    width, height = image.size
    pixels = None
    try:
        if image.format in _JPEGS:
            factor = 1
            pixels = _jpeg_pixels(image.size, data, scale) if image.mode == "RGB" else None
        else:
            scale = 1
        if pixels is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                if scale > 1:
                    image.draft(None, (width // scale, height // scale))  # draft picks the scale from this
                image.load()
        orientation = image.getexif().get(_ORIENTATION)  # from the header, decoded or not
    except Image.DecompressionBombError as exc:
        raise ServiceError(413, "too_many_pixels", f"{name}: {exc}") from None
    except _DECODE_ERRORS as exc:
        raise ServiceError(400, "corrupt_image", f"{name} is truncated or corrupt: {exc}") from None
    rgb = to_rgb(image, name) if pixels is None else _rgb_image(pixels)
    if factor > 1:
        rgb = rgb.reduce(factor)
    return _upright(rgb, (width, height), orientation)


def _upright(rgb: Image.Image, size: tuple[int, int], orientation: int | None) -> Decoded:
    """``rgb`` (an image of stored ``size``, possibly reduced) turned as its EXIF ``orientation`` says."""
    width, height = size
    if orientation in _TRANSPOSE:
        rgb = rgb.transpose(_TRANSPOSE[orientation])
        if orientation >= 5:  # a quarter turn: the upright image is as wide as the stored one is high
            width, height = height, width
    return Decoded(rgb, (width, height))


def display_eighths(size: tuple[int, int], scale: int, min_side: int = 0, long_side: int = 0) -> int | None:
    """The eighths of each side (1-7) at which libjpeg decodes a JPEG of ``size`` straight to a display size: its
    longer side within ``DISPLAY_SLACK`` of ``long_side`` and not above it, its shorter one at least ``min_side``;
    None where the power-of-two ``scale`` needs no resize to the display size, or where no eighth lands there.

    A 1632 x 1224 photo for a 1024 px overlay: five eighths (1020 x 765) decoded in 12.7 ms, where the whole photo
    took 9.2 ms and its resize to 1024 x 768 19.6 more (AMD EPYC). libjpeg's scales other than powers of two are
    slower per pixel (seven eighths of a 12 MP photo took 82 ms, the whole of it 35), so only a scale that spares
    the resize is taken."""
    longer, shorter = max(size), min(size)
    if not long_side or -(-longer // scale) <= long_side:
        return None
    for eighths in range(1, 8):
        longer_then, shorter_then = -(-longer * eighths // 8), -(-shorter * eighths // 8)
        if long_side * DISPLAY_SLACK <= longer_then <= long_side and shorter_then >= min_side:
            return eighths
    return None


def _jpeg_pixels(
    size: tuple[int, int], data: bytes | memoryview, scale: int, eighths: int | None = None
) -> np.ndarray | None:
    """A colour JPEG's pixels (stored ``size``) at ``1/scale`` of each side, or ``eighths``/8 where given (rounded
    up, as libjpeg and Pillow's draft do), as RGBX (height, width, 4), decoded with the settings Pillow's decoder
    uses (accurate integer DCT, smooth chroma upsampling); None where Pillow's own decoder is to decide: anything
    libjpeg-turbo warns about, which Pillow may take as it always has, or refuse with its own message."""
    eighths = eighths or 8 // scale
    width, height = (-(-side * eighths // 8) for side in size)
    try:
        pixels = simplejpeg.decode_jpeg(
            data, "RGBX", fastdct=False, fastupsample=False, strict=True,
            min_width=width, min_height=height, min_factor=8 / eighths,
        )  # fmt: skip
    except ValueError:
        return None
    # libjpeg-turbo picks among its scales (M/8) by the sizes: only the exact one asked for is taken.
    return pixels if pixels.shape == (height, width, 4) else None


def _mapped_rgb(pixels: np.ndarray) -> Image.Image:
    """An RGB image over RGBX ``pixels`` (height, width, 4), sharing their memory.

    Pillow keeps an RGB image four bytes a pixel, as RGBX, and maps an RGBX buffer of that layout without a copy
    (``Image.frombuffer`` does so for its own RGBX mode). The usual route, ``Image.fromarray`` of RGB, fills a new
    image with zeros and unpacks every pixel into it: 0.4 ms of a 451 x 300 photo's 0.85 ms decode.
    """
    pixels = np.ascontiguousarray(pixels)  # the mapping reads rows of 4 * width bytes, one after another
    image = Image.Image()._new(Image.core.map_buffer(pixels, pixels.shape[1::-1], "raw", 0, ("RGB", 0, 1)))
    image.readonly = 1  # as frombuffer leaves a mapped image: an in-place change copies it first
    return image


def _copied_rgb(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(pixels[..., :3]))


def _chosen_rgb() -> Callable[[np.ndarray], Image.Image]:
    """:func:`_mapped_rgb` where this Pillow maps an RGBX buffer as RGB exactly (checked on a small image, since
    the mapping is an internal of Pillow's), else the copy."""
    sample = np.arange(3 * 5 * 4, dtype=np.uint8).reshape(3, 5, 4)
    try:
        mapped = _mapped_rgb(sample)
        if mapped.mode == "RGB" and mapped.size == (5, 3) and np.array_equal(np.asarray(mapped), sample[..., :3]):
            return _mapped_rgb
        why = f"it gave a {mapped.mode} image of {mapped.size} with other pixels"
    except (AttributeError, TypeError, ValueError) as exc:
        why = repr(exc)
    log.warning("Pillow %s does not map RGBX pixels as an RGB image (%s): decoded JPEGs are copied", PIL_VERSION, why)
    return _copied_rgb


_rgb_image = _chosen_rgb()


def to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """Any Pillow mode to 8-bit RGB; deep integer modes are scaled down rather than clipped."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I"):
        values = np.asarray(image).astype(np.float64)
        if image.mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    try:
        # Alpha is dropped, as torchvision's image loader does for the training images.
        return image.convert("RGB")
    except ValueError as exc:
        raise ServiceError(415, "unsupported_mode", f"{name} has pixel mode {image.mode!r}: {exc}") from None
