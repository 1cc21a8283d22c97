"""Heat maps drawn over the crop the model saw, or over the whole image at display size, as PNG, JPEG or WebP."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image, ImageDraw

# Viridis (perceptually uniform, readable in grey and by colour-blind readers), 17 evenly spaced samples of
# the published table; linear interpolation between them stays within 6 levels of the full 256-entry table.
_VIRIDIS = np.array(
    [
        [68, 1, 84], [72, 24, 106], [71, 45, 123], [66, 64, 134], [59, 82, 139], [51, 99, 141],
        [44, 114, 142], [38, 130, 142], [33, 145, 140], [31, 160, 136], [40, 174, 128], [63, 188, 115],
        [94, 201, 98], [132, 212, 75], [173, 220, 48], [216, 226, 25], [253, 231, 37],
    ],
    np.float32,
)  # fmt: skip
LUT = (
    np.stack(
        [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_VIRIDIS)), _VIRIDIS[:, c]) for c in range(3)], axis=1
    )
    .round()
    .astype(np.uint8)
)  # (256, 3): colour of each heat level

# zlib level of the PNG: level 1 writes the same pixels several times faster than Pillow's default (6), and the
# noisy blended crop compresses little better at 6 (files about a tenth smaller; BENCHMARKS.md has the numbers).
PNG_LEVEL = 1
FORMATS = ("png", "jpeg", "webp")
JPEG_QUALITY = 90
WEBP_QUALITY = 85
DISPLAY_SIDE = 1024  # the longer side of a whole-image overlay unless the client asks for another
OUTSIDE_DIM = 0.45  # brightness kept outside the crop on whole-image overlays
BOX_COLOUR = (255, 255, 255)


def _heat(grid: np.ndarray, width: int, height: int) -> np.ndarray:
    """``grid`` [gh, gw] bilinearly resized to [height, width], negatives cut, scaled to its maximum (0..1)."""
    image = Image.fromarray(np.asarray(grid, np.float32))
    heat = np.maximum(np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), np.float32), 0)
    peak = float(heat.max())
    return heat / peak if peak > 0 else np.zeros_like(heat)


def _blend(pixels: np.ndarray, heat: np.ndarray, alpha: float) -> np.ndarray:
    colours = LUT[np.clip(heat * 255, 0, 255).astype(np.uint8)].astype(np.float32)
    weight = alpha * (0.35 + 0.65 * heat[..., None])  # stronger colour where the map is high
    return pixels.astype(np.float32) * (1 - weight) + colours * weight


def encoded(image: Image.Image, fmt: str = "png", png_level: int = PNG_LEVEL) -> bytes:
    """``image`` as a ``fmt`` file (one of ``FORMATS``); WebP at its fastest method, which costs little in size."""
    out = io.BytesIO()
    if fmt == "png":
        image.save(out, format="PNG", compress_level=png_level)
    elif fmt == "jpeg":
        image.save(out, format="JPEG", quality=JPEG_QUALITY)
    elif fmt == "webp":
        image.save(out, format="WEBP", quality=WEBP_QUALITY, method=0)
    else:
        raise ValueError(f"overlay format {fmt!r} is not one of {FORMATS}")
    return out.getvalue()


def heat_overlay(
    view: np.ndarray,
    attention: np.ndarray,
    alpha: float = 0.55,
    min_side: int = 224,
    png_level: int = PNG_LEVEL,
    fmt: str = "png",
) -> bytes:
    """Image bytes: ``view`` [h, w, 3] uint8 blended with ``attention`` [gh, gw] upsampled and coloured.

    The map is scaled to its own maximum so that small and large models look alike (negative values, which
    class maps can hold, show as none); the result is upscaled to at least ``min_side`` pixels so that a
    few-pixel crop stays visible. ``png_level`` (0-9) trades encoding time for size; the pixels are the same
    at every level. ``fmt``: one of ``FORMATS``.
    """
    height, width = view.shape[:2]
    blended = _blend(view, _heat(attention, width, height), alpha)
    image = Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))
    factor = max(1, -(-min_side // max(1, min(width, height))))
    if factor > 1:
        image = image.resize((width * factor, height * factor), Image.Resampling.NEAREST)
    return encoded(image, fmt, png_level)


def image_overlay(
    original: np.ndarray,
    grid: np.ndarray,
    box: tuple[float, float, float, float],
    size: tuple[int, int] | None = None,
    alpha: float = 0.55,
    png_level: int = PNG_LEVEL,
    fmt: str = "png",
) -> bytes:
    """Image bytes of the whole ``original`` [h, w, 3] uint8, at its own size, with ``grid`` drawn where it lies.

    ``original`` may be the image at display size: ``box``, the crop the model saw, is ``(left, top, right,
    bottom)`` in the pixels of the image's full ``size`` (width, height; default: the original's own), and may
    reach past the edges when the crop was padded. Outside it the image is dimmed; its outline is drawn.
    """
    height, width = original.shape[:2]
    sx, sy = (1.0, 1.0) if size is None else (width / size[0], height / size[1])
    left, top, right, bottom = (round(v * s) for v, s in zip(box, (sx, sy, sx, sy), strict=True))
    out = original.astype(np.float32) * OUTSIDE_DIM
    heat = _heat(grid, max(1, right - left), max(1, bottom - top))
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(right, width), min(bottom, height)
    if x1 > x0 and y1 > y0:
        inside = heat[y0 - top : y1 - top, x0 - left : x1 - left]
        out[y0:y1, x0:x1] = _blend(original[y0:y1, x0:x1], inside, alpha)
    image = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    line = max(1, round(min(width, height) / 150))
    ImageDraw.Draw(image).rectangle((left, top, right - 1, bottom - 1), outline=BOX_COLOUR, width=line)
    return encoded(image, fmt, png_level)


def b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")
