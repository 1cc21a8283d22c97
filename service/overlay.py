"""Heat maps drawn over the crop the model saw, or over the whole image at display size, as PNG, JPEG or WebP."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from types import ModuleType

import numpy as np
from PIL import Image, ImageDraw

try:  # ISA-L's deflate (igzip), where its wheel exists: a dependency of the serving extras
    from isal import isal_zlib
except ImportError:  # a platform without it: zlib at every level
    isal_zlib = None

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

# Deflate level of the PNG: level 1 writes the same pixels several times faster than Pillow's default (6), and the
# noisy blended crop compresses little better at 6 (files about a tenth smaller; BENCHMARKS.md has the numbers).
PNG_LEVEL = 1
# The levels deflated by ISA-L rather than zlib: igzip's own levels 1-3. On a 1008 x 756 overlay of a 12 MP photo, igzip
# at level 1 took 7.6 ms for 1,148 KiB where zlib took 26.5 ms for 1,187 KiB (AMD EPYC, Zen 4); zlib's level 0 stores
# the rows as they are, and its levels 4-9 compress harder than igzip can.
FAST_LEVELS = range(1, 4)
FORMATS = ("png", "jpeg", "webp")
JPEG_QUALITY = 90
WEBP_QUALITY = 85
DISPLAY_SIDE = 1024  # the longer side of a whole-image overlay unless the client asks for another
OUTSIDE_DIM = 0.45  # brightness kept outside the crop on whole-image overlays
BOX_COLOUR = (255, 255, 255)
_DIMMED = [round(value * OUTSIDE_DIM) for value in range(256)]  # one band's table of Image.point


def _levels(grid: np.ndarray, width: int, height: int) -> Image.Image:
    """``grid`` [gh, gw] bilinearly resized to ``width`` x ``height``, negatives cut, scaled to its maximum, as
    heat levels 0-255 (an ``L`` image)."""
    image = Image.fromarray(np.asarray(grid, np.float32))
    heat = np.maximum(np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), np.float32), 0)
    peak = float(heat.max())
    scale = 255 / peak if peak > 0 else 0.0
    return Image.fromarray(np.rint(heat * scale).astype(np.uint8), "L")


def _blend(pixels: Image.Image, levels: Image.Image, alpha: float) -> Image.Image:
    """``pixels`` (RGB) with each heat level's colour mixed in, more strongly where the level is high."""
    colours = levels.copy()
    colours.putpalette(LUT.tobytes())
    weight = [round(255 * alpha * (0.35 + 0.65 * level / 255)) for level in range(256)]
    return Image.composite(colours.convert("RGB"), pixels, levels.point(weight))


def deflater(level: int) -> ModuleType:
    """The module whose ``compress`` and ``crc32`` write a PNG at zlib ``level``: ISA-L's for ``FAST_LEVELS`` where
    installed, else zlib. Both write zlib streams that any PNG reader inflates."""
    return isal_zlib if isal_zlib is not None and level in FAST_LEVELS else zlib


def _png(image: Image.Image, level: int) -> bytes:
    """An RGB PNG with every row filtered by its difference from the row above (PNG's "Up"), then deflated at
    ``level`` (:func:`deflater`). Pillow tries each of PNG's filters on every row, which doubles the time for the same
    size here."""
    pixels = np.asarray(image, np.uint8)
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, width * 3)
    raw = np.empty((height, width * 3 + 1), np.uint8)
    raw[:, 0] = 2  # the filter type of each row: Up
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])  # modulo 256, as the filter is defined

    deflate = deflater(level)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", deflate.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, deflate, no interlacing
    idat = deflate.compress(raw, level)  # the array's own buffer, not a copy of it
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str = "png", png_level: int = PNG_LEVEL) -> bytes:
    """``image`` as a ``fmt`` file (one of ``FORMATS``); WebP at its fastest method, which costs little in size."""
    if fmt == "png":
        return _png(image, png_level)
    out = io.BytesIO()
    if fmt == "jpeg":
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
    image = _blend(Image.fromarray(view), _levels(attention, width, height), alpha)
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
    pixels = Image.fromarray(original)
    image = pixels.point(_DIMMED * 3)
    levels = _levels(grid, max(1, right - left), max(1, bottom - top))
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(right, width), min(bottom, height)
    if x1 > x0 and y1 > y0:
        inside = levels.crop((x0 - left, y0 - top, x1 - left, y1 - top))
        image.paste(_blend(pixels.crop((x0, y0, x1, y1)), inside, alpha), (x0, y0))
    line = max(1, round(min(width, height) / 150))
    ImageDraw.Draw(image).rectangle((left, top, right - 1, bottom - 1), outline=BOX_COLOUR, width=line)
    return encoded(image, fmt, png_level)


def b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")
