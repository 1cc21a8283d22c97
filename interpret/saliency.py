"""Saliency maps on the last stage's features, for GAP pooling and for CA pooling.

Grad-CAM, Grad-CAM++ and Score-CAM follow their papers (Score-CAM weights channels by the softmax
probability of the class, not by logits). On the CA model the gradients reach the last features only
through the last CA block. The CA model also explains itself without any gradient: its last block's
attention (class-agnostic) and the exact class-specific map ``a_p * w_c^T (W f_p + b)``.

Maps are returned at feature resolution, unnormalised; :func:`to_saliency` turns them into what the
metrics use: ReLU, min-max to [0, 1], bilinear upsampling to the image size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from training.model import CAStreamNet

GRADIENT_METHODS = ("gradcam", "gradcam++")
METHODS = ("gradcam", "gradcam++", "scorecam", "attention", "classmap")
CA_ONLY = ("attention", "classmap")  # maps that only the CA model has
LABELS = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "scorecam": "Score-CAM",
    "attention": "Raw attention",
    "classmap": "Class-specific map",
}


def normalise(maps: Tensor) -> Tensor:
    """ReLU, then min-max each map (N, h, w) to [0, 1]; a flat map becomes all zeros."""
    maps = maps.clamp(min=0)
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / torch.where(span > 0, span, 1.0), torch.zeros_like(maps))


def upsample(maps: Tensor, size: Sequence[int], align_corners: bool = False) -> Tensor:
    """Bilinear resize of maps (N, h, w) to ``size`` (H, W).

    Args:
        align_corners: False (half-pixel centres, ``F.interpolate``'s default) for saliency maps, as the
            authors' code resizes them; True (corner pixels aligned, ``nn.UpsamplingBilinear2d``) for
            Score-CAM's channel masks, as the authors' code and pytorch-grad-cam resize those.
    """
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=align_corners)[:, 0]


def to_saliency(maps: Tensor, size: Sequence[int]) -> Tensor:
    """The protocol's saliency: the map at feature resolution, ReLU, min-max normalised, upsampled."""
    return upsample(normalise(maps.float()), size)


def last_stage_gradients(model: CAStreamNet, taps: list[Tensor], classes: Tensor, pooling: str) -> Tensor:
    """Gradient of each image's class logit with respect to the last stage's features (N, C, h, w).

    ``taps`` come from ``model.forward_features`` under ``torch.no_grad()`` (not inference mode): only
    the head runs again, with gradients, so the backbone is never differentiated.
    """
    if any(t.is_inference() for t in taps):
        raise ValueError("taps were computed under torch.inference_mode(); compute them under torch.no_grad()")
    features = taps[-1].detach().float().requires_grad_(True)
    with torch.enable_grad():
        logits = model.forward_head([t.detach() for t in taps[:-1]] + [features], pooling).logits
        (grads,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), features)
    return grads


def grad_cam(features: Tensor, grads: Tensor) -> Tensor:
    """Grad-CAM: channels weighted by the spatial mean of their gradient; (N, C, h, w) -> (N, h, w)."""
    return torch.einsum("nc,nchw->nhw", grads.mean(dim=(2, 3)), features)


def grad_cam_plus_plus(features: Tensor, grads: Tensor, eps: float = 0.0) -> Tensor:
    """Grad-CAM++: ``alpha = g^2 / (2 g^2 + sum_p A g^3)``, channel weights ``sum_p relu(g) alpha``.

    Args:
        eps: added to the denominator; 0 is the paper's formula (pytorch-grad-cam adds 1e-6). Where the
            denominator is 0, alpha is 0.
    """
    g2 = grads.pow(2)
    denominator = 2 * g2 + features.sum(dim=(2, 3), keepdim=True) * g2 * grads + eps
    alpha = torch.where(denominator != 0, g2 / torch.where(denominator != 0, denominator, 1.0), torch.zeros_like(g2))
    weights = (grads.clamp(min=0) * alpha).sum(dim=(2, 3))
    return torch.einsum("nc,nchw->nhw", weights, features)


def score_cam(
    features: Tensor,
    images: Tensor,
    classes: Tensor,
    score: Callable[[Tensor, Tensor], Tensor],
    mask: Callable[[Tensor, Tensor], Tensor],
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
    *,
    align_corners: bool = True,
) -> Tensor:
    """Score-CAM: each channel, upsampled and min-max normalised, masks the image; its weight is the probability.

    Several models that share these features (GAP and CA heads on one backbone) are scored on the same
    masked images at once: ``score`` returns one probability per model.

    Args:
        features: last-stage features (N, C, h, w).
        images: normalised images (N, 3, H, W).
        classes: the class to score, per image and model (N, M).
        score: ``score(images (B, 3, H, W), classes (B, M))`` -> probabilities (B, M).
        mask: ``mask(images (B, 3, H, W), maps (B, H, W))`` -> masked images.
        on_batch: called with the number of masked images after each batch (progress).
        align_corners: how channels are upsampled to masks; True as in the authors' code and
            pytorch-grad-cam (``nn.UpsamplingBilinear2d``).

    Returns:
        Maps (N, M, h, w). Channels that are flat on an image get weight 0 (they mask nothing).
    """
    n, channels = features.shape[:2]
    size = images.shape[-2:]
    flat = features.flatten(2)
    weights = features.new_zeros(n, classes.shape[1], channels)
    image, channel = torch.nonzero(flat.amax(2) > flat.amin(2), as_tuple=True)  # jobs: non-flat channels
    for first in range(0, len(image), batch_size):
        i, c = image[first : first + batch_size], channel[first : first + batch_size]
        maps = upsample(features[i, c].float(), size, align_corners)
        low = maps.amin(dim=(1, 2), keepdim=True)
        span = (maps.amax(dim=(1, 2), keepdim=True) - low).clamp(min=torch.finfo(maps.dtype).tiny)
        weights[i, :, c] = score(mask(images[i], (maps - low) / span), classes[i]).to(weights.dtype)
        if on_batch is not None:
            on_batch(len(i))
    return torch.einsum("nmc,nchw->nmhw", weights, features.float())


def attention_map(model: CAStreamNet, taps: list[Tensor]) -> Tensor:
    """The CA model's last-block attention (N, h, w): class-agnostic, non-negative, sums to 1."""
    return model.forward_head(taps, "ca").attention


def class_specific_map(model: CAStreamNet, taps: list[Tensor], classes: Tensor) -> Tensor:
    """The CA model's exact decomposition of each image's class logit over positions (N, h, w), from its taps."""
    maps, _ = model.class_maps_of_taps(taps)
    return maps[torch.arange(len(classes)), classes]
