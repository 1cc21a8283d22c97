"""Decoding uploaded bytes into an RGB Pillow image, refusing what is not safe or not an image."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import ServiceError

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError)


def decode(data: bytes, max_pixels: int, name: str = "image") -> Image.Image:
    """Open ``data`` (first frame), check its size before decoding pixels, apply EXIF rotation, return RGB."""
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
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
            image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as exc:
        raise ServiceError(413, "too_many_pixels", f"{name}: {exc}") from None
    except _DECODE_ERRORS as exc:
        raise ServiceError(400, "corrupt_image", f"{name} is truncated or corrupt: {exc}") from None
    return to_rgb(image, name)


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
