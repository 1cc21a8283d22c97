"""The model's preprocessing in Pillow and NumPy, step for step as torchvision's eval transform."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from service.contract import Preprocessing

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Prepared:
    """One image ready for the model: ``input`` [3, crop, crop] float32 and ``view``, the RGB crop it sees.

    ``box`` is that crop in the original image's pixels ``(left, top, right, bottom)``; ``original`` the
    decoded RGB image [H, W, 3], kept only when asked for (whole-image overlays).
    """

    input: np.ndarray
    view: np.ndarray
    box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    original: np.ndarray | None = None


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(size)``: the shorter side becomes ``size``, the longer one is truncated."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def crop_origin(length: int, crop: int) -> int:
    """torchvision ``CenterCrop``: rounded offset, or symmetric zero padding (extra pixel right) when too small."""
    if crop > length:
        return -((crop - length) // 2)
    return int(round((length - crop) / 2.0))


class Preprocessor:
    """Turns RGB images into model inputs as described by the model's ``preprocessing`` metadata."""

    def __init__(self, prep: Preprocessing):
        self.prep = prep
        self.resample = RESAMPLE[prep.interpolation]
        self.mean = np.asarray(prep.mean, np.float32).reshape(3, 1, 1)
        self.std = np.asarray(prep.std, np.float32).reshape(3, 1, 1)
        self.scale = np.float32(prep.scale)

    def __call__(self, image: Image.Image, keep_original: bool = False) -> Prepared:
        if image.mode != "RGB":
            raise ValueError(f"expected an RGB image, got mode {image.mode!r}; decode with service.imaging.decode")
        crop = self.prep.crop
        original = np.asarray(image, dtype=np.uint8) if keep_original else None
        width, height = image.size
        size = resized_size(width, height, self.prep.resize)
        if size != image.size:
            # Pillow always antialiases when downscaling, like torchvision's Resize(antialias=True).
            image = image.resize(size, self.resample)
        left, top = crop_origin(image.width, crop), crop_origin(image.height, crop)
        view = np.asarray(image.crop((left, top, left + crop, top + crop)), dtype=np.uint8)
        x = view.transpose(2, 0, 1).astype(np.float32)  # [3, crop, crop]
        x *= self.scale
        x -= self.mean
        x /= self.std
        sx, sy = width / image.width, height / image.height  # resized -> original pixels
        box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
        return Prepared(np.ascontiguousarray(x), view, box, original)
