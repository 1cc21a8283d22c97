"""Saliency maps: hand-computed cases, and Grad-CAM / Grad-CAM++ against the grad-cam package."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from interpret import metrics, saliency
from training.model import CAStreamNet, ModelConfig


@pytest.fixture(scope="module")
def trained() -> tuple[CAStreamNet, Tensor, Tensor]:
    """A ResNet-18 CA model (random weights: the maps' arithmetic does not depend on training), images, classes."""
    torch.manual_seed(0)
    model = CAStreamNet(ModelConfig("resnet18", num_classes=10)).eval()
    images = torch.randn(4, 3, 96, 128)  # non-square: 3 x 4 last-stage features
    return model, images, torch.tensor([0, 3, 7, 9])


def test_normalise_is_relu_then_min_max_and_flat_maps_become_zero() -> None:
    maps = torch.tensor([[[-1.0, 1.0], [2.0, 3.0]], [[-1.0, -2.0], [-3.0, -4.0]], [[5.0, 5.0], [5.0, 5.0]]])
    expected = torch.tensor([[[0.0, 1 / 3], [2 / 3, 1.0]], [[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    torch.testing.assert_close(saliency.normalise(maps), expected)
    big = saliency.to_saliency(maps, (8, 6))
    assert big.shape == (3, 8, 6)
    assert big.min() >= 0 and big.max() <= 1


def test_grad_cam_and_grad_cam_plus_plus_by_hand() -> None:
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[1.0, 0.0], [0.0, 0.0]]]])  # (1, 2, 2, 2)
    grads = torch.tensor([[[[0.5, 0.5], [0.5, 0.5]], [[-1.0, 1.0], [0.0, 2.0]]]])
    # Grad-CAM weights: spatial means 0.5 and 0.5.
    torch.testing.assert_close(saliency.grad_cam(features, grads), 0.5 * features[:, 0] + 0.5 * features[:, 1])
    # Grad-CAM++ channel 0: alpha = 0.25 / (2 * 0.25 + 10 * 0.125) = 1/7 at every position, weight 4 * 0.5 / 7.
    # Channel 1, sum A = 1: alpha = g^2 / (2 g^2 + g^3); only positive gradients count: at g = 1, alpha = 1/3;
    # at g = 2, alpha = 4 / 16 = 1/4; weight = 1 * 1/3 + 2 * 1/4 = 5/6.
    expected = (2 / 7) * features[:, 0] + (5 / 6) * features[:, 1]
    torch.testing.assert_close(saliency.grad_cam_plus_plus(features, grads), expected)


def test_grad_cam_on_gap_is_the_class_activation_map(trained: tuple[CAStreamNet, Tensor, Tensor]) -> None:
    model, images, classes = trained
    with torch.no_grad():
        taps = model.forward_features(images)
    grads = saliency.last_stage_gradients(model, taps, classes, "gap")
    features = taps[-1]
    # For a linear classifier after GAP the gradient is w_c / (h w) everywhere, so Grad-CAM is CAM / (h w).
    weight = model.backbone.classifier.weight[classes]  # (N, C)
    cam = torch.einsum("nc,nchw->nhw", weight, features) / features[0, 0].numel()
    torch.testing.assert_close(saliency.grad_cam(features, grads), cam, rtol=1e-4, atol=1e-6)


def test_gradients_need_taps_from_no_grad_not_inference_mode(trained: tuple[CAStreamNet, Tensor, Tensor]) -> None:
    model, images, classes = trained
    with torch.inference_mode():
        taps = model.forward_features(images)
    with pytest.raises(ValueError, match="no_grad"):
        saliency.last_stage_gradients(model, taps, classes, "ca")


class _Logits(nn.Module):
    """The model seen by pytorch-grad-cam: images -> logits of one pooling."""

    def __init__(self, model: CAStreamNet, pooling: str) -> None:
        super().__init__()
        self.model, self.pooling = model, pooling

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images, pooling=self.pooling).logits


@pytest.mark.parametrize("pooling", ["gap", "ca"])
@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_maps_match_the_grad_cam_package(
    trained: tuple[CAStreamNet, Tensor, Tensor], method: str, pooling: str
) -> None:
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, images, classes = trained
    model = CAStreamNet(model.config).eval()
    model.load_state_dict(trained[0].state_dict())  # a private copy: the package turns gradients on
    package = (GradCAM if method == "gradcam" else GradCAMPlusPlus)(
        _Logits(model, pooling), [model.backbone.net.layer4]
    )
    with package:
        theirs = torch.from_numpy(package(images, targets=[ClassifierOutputTarget(int(c)) for c in classes]))

    with torch.no_grad():
        taps = model.forward_features(images)
    grads = saliency.last_stage_gradients(model, taps, classes, pooling)
    if method == "gradcam":
        maps = saliency.grad_cam(taps[-1], grads)
    else:
        maps = saliency.grad_cam_plus_plus(taps[-1], grads, eps=1e-6)  # the package's constant
    ours = saliency.to_saliency(maps, images.shape[-2:])
    # Same normalisation on both sides: the package min-maxes again after resizing.
    assert theirs.shape == ours.shape
    assert (ours.flatten(1).amax(1) > 0).sum() >= 3  # real maps, not all-zero ones that would match trivially
    torch.testing.assert_close(saliency.normalise(ours), theirs, atol=1e-5, rtol=0)


def _brightness_score(region: Tensor):
    """Probabilities of two models on the same images: the mean of ``region`` and one minus it."""

    def score(images: Tensor, classes: Tensor) -> Tensor:
        m = (images[:, 0] * region).sum(dim=(1, 2)) / region.sum()
        probs = torch.stack([m, 1 - m], dim=1)
        return torch.stack([probs, probs.flip(1)], dim=1).gather(2, classes[..., None])[..., 0]

    return score


def test_score_cam_weights_channels_by_the_probability_of_the_masked_image() -> None:
    region = torch.zeros(6, 6)
    region[:3, :3] = 1
    images = torch.ones(1, 3, 6, 6)
    features = torch.stack([2 + 2 * region, 1 - region, torch.full((6, 6), 0.7)])[None]  # (1, 3, 6, 6)
    masked_inputs = []

    def mask(images: Tensor, maps: Tensor) -> Tensor:
        masked_inputs.append(maps)
        return metrics.mask_in_pixel_space(images, maps, (0.0,) * 3, (1.0,) * 3)

    calls = []
    cams = saliency.score_cam(
        features, images, torch.tensor([[0, 0]]), _brightness_score(region), mask, batch_size=1, on_batch=calls.append
    )
    # Channel 0 normalises to the region's indicator: keeps the region -> 1 on model 0, 0 on model 1.
    # Channel 1 blacks the region out -> 0 and 1. Channel 2 is flat: never scored, weight 0.
    assert calls == [1, 1]
    torch.testing.assert_close(masked_inputs[0][0], region)
    torch.testing.assert_close(cams[0, 0], features[0, 0])
    torch.testing.assert_close(cams[0, 1], features[0, 1])


def test_attention_and_class_maps_of_the_ca_model() -> None:
    torch.manual_seed(0)
    model = CAStreamNet(ModelConfig("resnet18", num_classes=5)).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        taps = model.forward_features(images)
        attention = saliency.attention_map(model, taps)
        classes = torch.tensor([1, 4])
        maps = saliency.class_specific_map(model, taps, classes)
        logits = model(images).logits
    assert attention.shape == maps.shape == (2, 2, 2)
    torch.testing.assert_close(attention.sum(dim=(1, 2)), torch.ones(2))
    bias = model.backbone.classifier.bias[classes]
    torch.testing.assert_close(maps.sum(dim=(1, 2)) + bias, logits[torch.arange(2), classes], rtol=1e-4, atol=1e-4)
