"""Faithfulness and localisation scores of saliency maps.

Faithfulness follows the evaluation protocol of the CA-Stream paper: Average Drop, Average Gain and
Average Increase compare the class probability on an image with that on the image masked by its
saliency; insertion and deletion (RISE) follow the probability while the most salient pixels are
added to a blurred copy, or removed, a fixed number of pixels per step. The blur and the pace of the
published codes are named in :mod:`interpret.protocol`. Localisation needs object masks: the pointing
game and the share of saliency energy inside the mask.

Every model enters through a ``score`` callable: ``score(images (B, 3, H, W), classes (B,))`` returns
the softmax probability (B,) of each image's class. Images are normalised tensors; saliency maps are
(N, H, W) in [0, 1] at the images' resolution.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from interpret.protocol import DEFAULT, PROTOCOLS

Score = Callable[[Tensor, Tensor], Tensor]

BLUR_KERNEL = PROTOCOLS[DEFAULT].blur_kernel
BLUR_SIGMA = PROTOCOLS[DEFAULT].blur_sigma
GAUSSIAN_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default: the filter reaches 4 sigma


def default_pixels_per_step(height: int, width: int) -> int:
    """The CA-Stream authors' pace: 8 rows per step (``imsize * 8``), 1792 pixels (28 steps) at 224 x 224."""
    return PROTOCOLS[DEFAULT].pixels_per_step(height, width)


def mask_in_pixel_space(images: Tensor, saliency: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Multiplies images by their saliency in pixel space: un-normalise, scale (0 is black), normalise again.

    Args:
        images: normalised images (N, 3, H, W).
        saliency: maps (N, H, W) in [0, 1].
        mean, std: the normalisation that produced ``images``.
    """
    mean_ = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_ = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return ((images * std_ + mean_) * saliency[:, None] - mean_) / std_


def drop_gain_increase(p: Tensor, o: Tensor) -> dict[str, Tensor]:
    """Per-image terms of Average Drop, Average Gain and Average Increase (average them, times 100).

    Args:
        p: probability of the explained class on each image (N,).
        o: the same on each image masked by its saliency (N,).

    Returns:
        ``{"drop": max(0, p - o) / p, "gain": max(0, o - p) / (1 - p), "increase": [o > p]}``, each (N,).
        A term whose denominator is 0 is 0: at p = 0 nothing can drop, at p = 1 nothing can be gained.
    """
    if p.shape != o.shape:
        raise ValueError(f"p and o must have the same shape, got {tuple(p.shape)} and {tuple(o.shape)}")
    zero = torch.zeros_like(p)
    drop = torch.where(p > 0, (p - o).clamp(min=0) / torch.where(p > 0, p, 1.0), zero)
    gain = torch.where(p < 1, (o - p).clamp(min=0) / torch.where(p < 1, 1 - p, 1.0), zero)
    return {"drop": drop, "gain": gain, "increase": (o > p).to(p.dtype)}


def _reflect(index: np.ndarray, length: int) -> np.ndarray:
    """scipy.ndimage's ``reflect`` border (d c b a | a b c d | d c b a), repeated as far as an index reaches."""
    index = np.mod(index, 2 * length)
    return np.where(index < length, index, 2 * length - 1 - index)


def point_blur_kernel(size: int, sigma: float, truncate: float = GAUSSIAN_TRUNCATE) -> Tensor:
    """The published codes' ``gkern(size, sigma)``: a Gaussian filter of one point on a size x size grid.

    The filter is scipy.ndimage's ``gaussian_filter`` (reflecting borders, a kernel truncated at
    ``truncate`` sigma), computed here without scipy. When the Gaussian is wider than the grid the
    reflections fold its tails back onto it, so for sigma 5 the kernel is nearly flat: ``(5, 5)`` is a
    5 x 5 box to within 3e-6, ``(11, 5)`` runs from 0.00883 at the centre to 0.00774 in the corners.

    Returns:
        (size, size) float32 weights that sum to 1 (in float64, before the cast, as the references cast).
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"blur kernel size must be a positive odd number, got {size!r}")
    if sigma <= 0:
        raise ValueError(f"blur sigma must be positive, got {sigma!r}")
    radius = int(truncate * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    # A 1-D filter of a point at the centre c: out[i] = sum_k w[k] x[reflect(i + k)], and x is 1 only at c.
    lands = _reflect(np.arange(size)[:, None] + offsets[None, :], size) == size // 2  # (size, 2 radius + 1)
    line = (lands * weights).sum(axis=1)
    # The filter is separable, and so is the point: filtering rows, then columns, gives the outer product.
    return torch.from_numpy(np.outer(line, line).astype(np.float32))


def gaussian_blur(images: Tensor, kernel_size: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> Tensor:
    """The insertion substrate: ``gkern(kernel_size, sigma)`` per channel, zero-padded by ``kernel_size // 2``.

    On normalised images the zero padding is the data set's mean colour.
    """
    channels = images.shape[1]
    kernel = point_blur_kernel(kernel_size, sigma).to(images.device, images.dtype)
    kernel = kernel.expand(channels, 1, kernel_size, kernel_size)
    return F.conv2d(images, kernel, padding=kernel_size // 2, groups=channels)


def salient_order(saliency: Tensor) -> Tensor:
    """Pixel indices (N, H * W) from most to least salient, as the published codes order them.

    That order is ``np.argsort`` (numpy's default kind, which is not stable) of each flattened float32
    map, reversed: pixels of equal saliency come in whatever order numpy's sort leaves them, reversed.
    It is computed with numpy itself so that ties fall exactly as they would in those codes on the same
    machine (numpy's SIMD sorts can order ties differently on other CPUs or numpy versions).

    Args:
        saliency: (N, H, W); ranked as float32, the references' maps' type.
    """
    flat = saliency.detach().to("cpu", torch.float32).reshape(saliency.shape[0], -1).contiguous().numpy()
    order = np.argsort(flat, axis=1)[:, ::-1]
    return torch.from_numpy(order.copy()).to(saliency.device)


def pixel_ranks(saliency: Tensor) -> Tensor:
    """Rank of every pixel in :func:`salient_order` (0 is the most salient).

    Args:
        saliency: (N, H, W).

    Returns:
        (N, H, W) integer ranks.
    """
    order = salient_order(saliency)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions).view_as(saliency)


def auc(curves: Tensor) -> Tensor:
    """Trapezoidal area under curves sampled at T + 1 evenly spaced points on [0, 1]: (..., T + 1) -> (...)."""
    steps = curves.shape[-1] - 1
    if steps < 1:
        raise ValueError(f"a curve needs at least two points, got {curves.shape[-1]}")
    return (curves.sum(-1) - curves[..., 0] / 2 - curves[..., -1] / 2) / steps


def _check_inputs(images: Tensor, classes: Tensor, saliency: Tensor, pixels_per_step: int) -> None:
    if images.ndim != 4 or saliency.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(
            f"saliency must be (N, H, W) for images (N, C, H, W), got {tuple(saliency.shape)} and {tuple(images.shape)}"
        )
    if classes.shape != images.shape[:1]:
        raise ValueError(f"expected one class per image ({images.shape[0]}), got shape {tuple(classes.shape)}")
    if pixels_per_step < 1:
        raise ValueError(f"pixels per step must be at least 1, got {pixels_per_step!r}")


def insertion_deletion(
    score: Score,
    images: Tensor,
    classes: Tensor,
    saliency: Tensor,
    pixels_per_step: int,
    *,
    blur_kernel: int = BLUR_KERNEL,
    blur_sigma: float = BLUR_SIGMA,
    batch_size: int = 32,
    original: Tensor | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """Insertion and deletion curves, many steps of many images per call of ``score``.

    Step k changes the k * ``pixels_per_step`` most salient pixels: deletion sets them to 0 (the mean
    colour of normalised images), insertion copies them from the image into its blurred copy. Every
    (curve, image, step) is one job; jobs are scored ``batch_size`` at a time, and each batch of
    perturbed images is built only when it is scored, so memory stays bounded.

    Args:
        original: ``score(images, classes)`` when the caller has it already; both curves reach that
            value at one end (deletion starts from the image, insertion ends on it), so it is scored once.
        on_batch: called with the number of jobs after each batch (progress).

    Returns:
        ``(insertion, deletion)``, each (N, T + 1) with T = ceil(H * W / pixels_per_step).
    """
    _check_inputs(images, classes, saliency, pixels_per_step)
    n, _, height, width = images.shape
    steps = math.ceil(height * width / pixels_per_step)
    if original is None:
        original = torch.cat(
            [score(images[i : i + batch_size], classes[i : i + batch_size]) for i in range(0, n, batch_size)]
        )
    curves = images.new_empty(2, n, steps + 1)
    curves[0, :, steps] = original  # insertion ends on the image itself
    curves[1, :, 0] = original  # deletion starts from it
    # starts[kind] and finishes[kind] for kind 0 (insertion) and 1 (deletion): (2, N, 3, H, W)
    starts = torch.stack([gaussian_blur(images, blur_kernel, blur_sigma), images])
    finishes = torch.stack([images, torch.zeros_like(images)])
    ranks = pixel_ranks(saliency)[:, None]  # (N, 1, H, W)
    # Remaining jobs: insertion steps 0..T-1 and deletion steps 1..T of every image.
    kind = torch.arange(2).repeat_interleave(n * steps)
    image = torch.arange(n).repeat_interleave(steps).repeat(2)
    step = torch.cat([torch.arange(steps).repeat(n), torch.arange(1, steps + 1).repeat(n)])
    for first in range(0, len(kind), batch_size):
        k, i, s = kind[first : first + batch_size], image[first : first + batch_size], step[first : first + batch_size]
        changed = ranks[i] < (s * pixels_per_step).to(ranks.device).view(-1, 1, 1, 1)  # (B, 1, H, W)
        batch = torch.where(changed, finishes[k, i], starts[k, i])
        curves[k, i, s] = score(batch, classes[i]).to(curves.dtype)
        if on_batch is not None:
            on_batch(len(k))
    return curves[0], curves[1]


def reference_insertion_deletion(
    score: Score,
    image: Tensor,
    cls: Tensor,
    saliency: Tensor,
    pixels_per_step: int,
    *,
    blur_kernel: int = BLUR_KERNEL,
    blur_sigma: float = BLUR_SIGMA,
) -> tuple[Tensor, Tensor]:
    """The straightforward loop: one image, one step, one forward pass at a time (as RISE's code does).

    Slow; it exists as the definition that :func:`insertion_deletion` must reproduce.

    Args:
        image: one normalised image (3, H, W); ``cls`` a scalar class; ``saliency`` (H, W).

    Returns:
        ``(insertion, deletion)``, each (T + 1,).
    """
    _check_inputs(image[None], cls.view(1), saliency[None], pixels_per_step)
    channels = image.shape[0]
    order = salient_order(saliency[None])[0]
    steps = math.ceil(order.numel() / pixels_per_step)
    blurred = gaussian_blur(image[None], blur_kernel, blur_sigma)[0]
    curves = []
    for start, finish in ((blurred, image), (image, torch.zeros_like(image))):
        current = start.clone().contiguous()
        source = finish.contiguous().view(channels, -1)
        values = []
        for k in range(steps + 1):
            values.append(score(current[None], cls.view(1))[0])
            pixels = order[k * pixels_per_step : (k + 1) * pixels_per_step]
            current.view(channels, -1)[:, pixels] = source[:, pixels]
        curves.append(torch.stack(values))
    return curves[0], curves[1]


def pointing_game(saliency: Tensor, masks: Tensor) -> Tensor:
    """Whether each map's maximum lies on the object (N,) bool; a flat map points nowhere and misses.

    Of several equal maxima the first in raster order counts.
    """
    if saliency.shape != masks.shape:
        raise ValueError(
            f"saliency and masks must have the same shape, got {tuple(saliency.shape)} and {tuple(masks.shape)}"
        )
    flat = saliency.flatten(1)
    peak = flat.argmax(dim=1, keepdim=True)
    hit = masks.flatten(1).gather(1, peak)[:, 0].bool()
    return hit & (flat.amax(1) > flat.amin(1))


def energy_in_mask(saliency: Tensor, masks: Tensor) -> Tensor:
    """Share of each map's total saliency that falls on the object (N,), in [0, 1]; 0 for an all-zero map."""
    if saliency.shape != masks.shape:
        raise ValueError(
            f"saliency and masks must have the same shape, got {tuple(saliency.shape)} and {tuple(masks.shape)}"
        )
    total = saliency.flatten(1).sum(1)
    inside = (saliency * masks.to(saliency.dtype)).flatten(1).sum(1)
    return torch.where(total > 0, inside / torch.where(total > 0, total, 1.0), torch.zeros_like(total))
