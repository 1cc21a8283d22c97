"""Attention heat-map drawn over the crop the model saw, encoded as PNG."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

# Anchor colours of a perceptually ordered map (dark blue -> teal -> green -> yellow), interpolated to 256.
_ANCHORS = np.array(
    [[48, 18, 59], [40, 110, 200], [30, 180, 160], [120, 220, 80], [250, 230, 40], [250, 250, 200]], np.float32
)
_LUT = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c]) for c in range(3)], axis=1
).astype(np.uint8)


# zlib level of the PNG: level 1 writes the same pixels several times faster than Pillow's default (6), and the
# noisy blended crop compresses little better at 6 (files about a tenth smaller; BENCHMARKS.md has the numbers).
PNG_LEVEL = 1


def heat_overlay(
    view: np.ndarray, attention: np.ndarray, alpha: float = 0.55, min_side: int = 224, png_level: int = PNG_LEVEL
) -> bytes:
    """PNG bytes: ``view`` [h, w, 3] uint8 blended with ``attention`` [gh, gw] upsampled and coloured.

    The map is scaled to its own maximum so that small and large models look alike; the result is
    upscaled to at least ``min_side`` pixels so that a few-pixel crop stays visible. ``png_level`` (0-9)
    trades encoding time for size; the pixels are the same at every level.
    """
    height, width = view.shape[:2]
    grid = Image.fromarray(np.asarray(attention, np.float32))
    heat = np.asarray(grid.resize((width, height), Image.Resampling.BILINEAR), np.float32)
    peak = float(heat.max())
    heat = heat / peak if peak > 0 else np.zeros_like(heat)
    colours = _LUT[np.clip(heat * 255, 0, 255).astype(np.uint8)].astype(np.float32)
    weight = alpha * (0.35 + 0.65 * heat[..., None])  # stronger colour where attention is high
    blended = view.astype(np.float32) * (1 - weight) + colours * weight
    image = Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))
    factor = max(1, -(-min_side // max(1, min(width, height))))
    if factor > 1:
        image = image.resize((width * factor, height * factor), Image.Resampling.NEAREST)
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=png_level)
    return out.getvalue()


def heat_overlay_b64(view: np.ndarray, attention: np.ndarray, png_level: int = PNG_LEVEL) -> str:
    return base64.b64encode(heat_overlay(view, attention, png_level=png_level)).decode("ascii")
