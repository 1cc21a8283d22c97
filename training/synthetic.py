"""The embedded default data set: coloured shapes on textured clutter, each with its ground-truth mask.

Every image holds exactly one object of a known class, drawn at a random position, scale, rotation and
colour over a textured background with line and dot distractors. Generation is vectorised over a batch
of images with NumPy and deterministic in its seed, so the same seed gives the same pixels everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

Array = np.ndarray


def _disk(x: Array, y: Array) -> Array:
    return x * x + y * y <= 1.0


def _square(x: Array, y: Array) -> Array:
    return np.maximum(np.abs(x), np.abs(y)) <= 0.75


def _triangle(x: Array, y: Array) -> Array:
    # Equilateral triangle inscribed in the unit circle: three half-planes at 120 degrees.
    inside = y >= -0.5
    for angle in (np.pi / 6, 5 * np.pi / 6):
        inside &= x * np.cos(angle) + y * np.sin(angle) <= 0.5
    return inside


def _flower(x: Array, y: Array) -> Array:
    radius = np.hypot(x, y)
    return radius <= 0.55 + 0.45 * np.cos(5 * np.arctan2(y, x))


def _cross(x: Array, y: Array) -> Array:
    ax, ay = np.abs(x), np.abs(y)
    return ((ax <= 0.28) & (ay <= 0.95)) | ((ay <= 0.28) & (ax <= 0.95))


def _ring(x: Array, y: Array) -> Array:
    r2 = x * x + y * y
    return (r2 <= 1.0) & (r2 >= 0.55**2)


def _crescent(x: Array, y: Array) -> Array:
    return (x * x + y * y <= 1.0) & ((x - 0.5) ** 2 + y * y >= 0.8**2)


def _arrow(x: Array, y: Array) -> Array:
    shaft = (np.abs(y) <= 0.2) & (x >= -0.95) & (x <= 0.15)
    head = (x >= 0.1) & (np.abs(y) <= 0.95 * (0.95 - x))
    return shaft | head


def _ell(x: Array, y: Array) -> Array:
    upright = (x >= -0.8) & (x <= -0.3) & (np.abs(y) <= 0.85)
    foot = (y >= 0.35) & (y <= 0.85) & (x >= -0.8) & (x <= 0.75)
    return upright | foot


def _half_disk(x: Array, y: Array) -> Array:
    return (x * x + y * y <= 1.0) & (y >= -0.05)


SHAPES: dict[str, Callable[[Array, Array], Array]] = {
    "disk": _disk,
    "square": _square,
    "triangle": _triangle,
    "flower": _flower,
    "cross": _cross,
    "ring": _ring,
    "crescent": _crescent,
    "arrow": _arrow,
    "ell": _ell,
    "half-disk": _half_disk,
}
CLASSES: tuple[str, ...] = tuple(SHAPES)


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines a synthetic split; two equal specs give identical arrays."""

    size: int = 112
    count: int = 1000
    seed: int = 0
    min_scale: float = 0.2
    max_scale: float = 0.34
    distractors: int = 5
    texture_contrast: float = 0.5

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class SyntheticSplit:
    """Images as uint8 NHWC, integer labels, and boolean object masks (N, H, W)."""

    images: Array
    labels: Array
    masks: Array
    classes: tuple[str, ...] = CLASSES

    def __len__(self) -> int:
        return len(self.labels)


def _random_colours(rng: np.random.Generator, n: int) -> Array:
    return rng.uniform(0.0, 1.0, size=(n, 3)).astype(np.float32)


def _background(rng: np.random.Generator, n: int, grid: Array, contrast: float) -> Array:
    """Two-colour texture from a few random sinusoidal gratings; (n, H, W, 3) float in [0, 1]."""
    u, v = grid
    texture = 0.05 * rng.standard_normal((n, v.shape[1], u.shape[2]), dtype=np.float32)
    for _ in range(3):
        freq = rng.uniform(2.0, 12.0, size=(n, 1, 1)).astype(np.float32) * np.pi
        angle = rng.uniform(0, np.pi, size=(n, 1, 1)).astype(np.float32)
        phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1)).astype(np.float32)
        # sin(a + b) = sin a cos b + cos a sin b: a grating from row and column vectors alone.
        a, b = freq * u * np.cos(angle) + phase, freq * v * np.sin(angle)
        texture += (np.sin(a) * np.cos(b) + np.cos(a) * np.sin(b)) / 6.0
    mix = np.clip(texture * contrast + 0.5, 0.0, 1.0)[..., None]
    low, high = _random_colours(rng, n), _random_colours(rng, n)
    return low[:, None, None, :] + (high - low)[:, None, None, :] * mix


def _paint(canvas: Array, mask: Array, colour: Array) -> None:
    for image, where, value in zip(canvas, mask, colour, strict=True):
        image[where] = value


def _add_distractors(rng: np.random.Generator, canvas: Array, grid: Array, count: int) -> None:
    """Thin line segments and small dots: clutter whose geometry is unlike any class."""
    u, v = grid
    n = canvas.shape[0]
    for index in range(count):
        cx = rng.uniform(-1, 1, size=(n, 1, 1)).astype(np.float32)
        cy = rng.uniform(-1, 1, size=(n, 1, 1)).astype(np.float32)
        colour = _random_colours(rng, n)
        if index % 2 == 0:
            angle = rng.uniform(0, np.pi, size=(n, 1, 1)).astype(np.float32)
            length = rng.uniform(0.2, 0.7, size=(n, 1, 1)).astype(np.float32)
            along = (u - cx) * np.cos(angle) + (v - cy) * np.sin(angle)
            across = -(u - cx) * np.sin(angle) + (v - cy) * np.cos(angle)
            mask = (np.abs(along) <= length) & (np.abs(across) <= 0.025)
        else:
            radius = rng.uniform(0.03, 0.07, size=(n, 1, 1)).astype(np.float32)
            mask = (u - cx) ** 2 + (v - cy) ** 2 <= radius**2
        _paint(canvas, mask, colour)


def _object_colours(rng: np.random.Generator, background: Array) -> Array:
    """A colour per image that stands out from that image's mean background colour."""
    mean = background.mean(axis=(1, 2))
    colours = _random_colours(rng, len(mean))
    for _ in range(8):
        close = np.linalg.norm(colours - mean, axis=1) < 0.45
        if not close.any():
            break
        colours[close] = _random_colours(rng, int(close.sum()))
    return colours


def generate(spec: SyntheticSpec, chunk: int = 512) -> SyntheticSplit:
    """Generates one split, deterministically from ``spec``.

    Classes are balanced (``count`` is rounded down to a multiple of the class count only when it is
    at least that large), shuffled with the same seed.
    """
    if spec.size < 16:
        raise ValueError(f"synthetic image size must be at least 16 pixels, got {spec.size!r}")
    if spec.count < 1:
        raise ValueError(f"synthetic split needs at least one image, got count={spec.count!r}")
    rng = np.random.default_rng(spec.seed)
    labels = np.arange(spec.count) % len(CLASSES)
    rng.shuffle(labels)
    coords = (np.arange(spec.size, dtype=np.float32) + 0.5) / spec.size * 2 - 1
    grid = (coords[None, None, :], coords[None, :, None])  # x varies along columns, y along rows
    images = np.empty((spec.count, spec.size, spec.size, 3), dtype=np.uint8)
    masks = np.empty((spec.count, spec.size, spec.size), dtype=bool)
    for start in range(0, spec.count, chunk):
        part = labels[start : start + chunk]
        canvas = _background(rng, len(part), grid, spec.texture_contrast)
        _add_distractors(rng, canvas, grid, spec.distractors)
        mask = _objects(rng, part, grid, spec)
        _paint(canvas, mask, _object_colours(rng, canvas))
        images[start : start + len(part)] = np.clip(canvas * 255 + 0.5, 0, 255).astype(np.uint8)
        masks[start : start + len(part)] = mask
    return SyntheticSplit(images=images, labels=labels.astype(np.int64), masks=masks)


def _objects(rng: np.random.Generator, labels: Array, grid: Array, spec: SyntheticSpec) -> Array:
    """Masks of one object per image: each class's shape in its own randomly placed frame."""
    u, v = grid
    n = len(labels)
    scale = rng.uniform(spec.min_scale, spec.max_scale, size=(n, 1, 1)).astype(np.float32) * 2
    # Keep the whole shape (radius <= scale in canonical units) inside the image.
    cx = rng.uniform(-1, 1, size=(n, 1, 1)).astype(np.float32) * (1 - scale)
    cy = rng.uniform(-1, 1, size=(n, 1, 1)).astype(np.float32) * (1 - scale)
    angle = rng.uniform(0, 2 * np.pi, size=(n, 1, 1)).astype(np.float32)
    cos, sin = np.cos(angle), np.sin(angle)
    x = ((u - cx) * cos + (v - cy) * sin) / scale
    y = (-(u - cx) * sin + (v - cy) * cos) / scale
    mask = np.zeros((n, v.shape[1], u.shape[2]), dtype=bool)
    for index, shape in enumerate(SHAPES.values()):
        chosen = labels == index
        if chosen.any():
            mask[chosen] = shape(x[chosen], y[chosen])
    return mask
