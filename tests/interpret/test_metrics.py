"""Faithfulness and localisation metrics on cases whose answers are known by hand.

The model of most tests is a two-class "brightness meter": the probability of class 0 is the mean pixel
value of a fixed region R, so every masked or perturbed image has a probability that can be worked out
on paper.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from interpret import metrics as xm


class Brightness(nn.Module):
    """softmax(logits)[0] = mean over ``region`` of the pixel values (normalised with ``mean``, ``std``)."""

    def __init__(self, region: Tensor, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        self.region, self.mean, self.std = region, mean, std

    def forward(self, images: Tensor) -> Tensor:
        pixels = images * self.std + self.mean
        m = (pixels[:, 0] * self.region).sum(dim=(1, 2)) / self.region.sum()
        return torch.stack([m.log(), (1 - m).log()], dim=1)


def score_of(model: nn.Module):
    return lambda images, classes: model(images).softmax(1).gather(1, classes[:, None])[:, 0]


def top_row_region(size: int = 8) -> Tensor:
    region = torch.zeros(size, size)
    region[0, 1 : size - 1] = 1  # the top row without its corners: 6 pixels at size 8
    return region


def test_drop_gain_increase_by_hand() -> None:
    p = torch.tensor([0.5, 0.8, 0.2, 1.0, 0.0])
    o = torch.tensor([0.25, 0.9, 0.6, 1.0, 0.3])
    terms = xm.drop_gain_increase(p, o)
    torch.testing.assert_close(terms["drop"], torch.tensor([0.5, 0.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(terms["gain"], torch.tensor([0.0, 0.5, 0.5, 0.0, 0.3]))
    torch.testing.assert_close(terms["increase"], torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0]))
    # averaged and in percent, as the tables report them
    assert 100 * terms["drop"].mean().item() == pytest.approx(10.0)
    assert 100 * terms["gain"].mean().item() == pytest.approx(26.0)
    assert 100 * terms["increase"].mean().item() == pytest.approx(60.0)


def test_masking_happens_in_pixel_space() -> None:
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.1)
    pixels = torch.full((1, 3, 2, 2), 0.8)
    images = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    saliency = torch.tensor([[[1.0, 0.5], [0.0, 0.25]]])
    masked = xm.mask_in_pixel_space(images, saliency, mean, std)
    back = masked * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    torch.testing.assert_close(back, 0.8 * saliency[:, None].expand(1, 3, 2, 2))


def test_average_drop_gain_increase_with_the_brightness_model() -> None:
    region = torch.zeros(8, 8)
    region[:4, :4] = 1
    mean, std = 0.5, 0.25
    model = Brightness(region, mean, std)
    pixels = torch.full((1, 3, 8, 8), 0.3)
    pixels[:, :, :4, :4] = 0.8
    images = (pixels - mean) / std
    score = score_of(model)

    def masked_probability(saliency: Tensor, cls: int) -> tuple[Tensor, Tensor]:
        classes = torch.tensor([cls])
        masked = xm.mask_in_pixel_space(images, saliency, (mean,) * 3, (std,) * 3)
        return score(images, classes), score(masked, classes)

    # A map that keeps R whole leaves the probability unchanged: nothing drops, nothing is gained.
    keeps_region = torch.where(region.bool(), 1.0, 0.5)[None]
    terms = xm.drop_gain_increase(*masked_probability(keeps_region, 0))
    assert terms["drop"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["gain"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["increase"].item() == 0.0
    # A uniform 0.5 halves R's brightness: p = 0.8 -> o = 0.4 for class 0, a drop of a half; for class 1,
    # p = 0.2 -> o = 0.6, a gain of 0.4 / 0.8 = a half, and an increase.
    half = torch.full((1, 8, 8), 0.5)
    p, o = masked_probability(half, 0)
    assert (p.item(), o.item()) == pytest.approx((0.8, 0.4), abs=1e-6)
    assert xm.drop_gain_increase(p, o)["drop"].item() == pytest.approx(0.5, abs=1e-6)
    terms = xm.drop_gain_increase(*masked_probability(half, 1))
    assert terms["gain"].item() == pytest.approx(0.5, abs=1e-6)
    assert terms["increase"].item() == 1.0


def test_auc_is_the_trapezoid_over_the_unit_interval() -> None:
    torch.testing.assert_close(xm.auc(torch.tensor([0.0, 1.0])), torch.tensor(0.5))
    torch.testing.assert_close(xm.auc(torch.full((3, 29), 0.7)), torch.full((3,), 0.7))
    torch.testing.assert_close(xm.auc(torch.tensor([1.0, 0.5, 0.0, 0.0, 0.0])), torch.tensor(0.25))  # (1.5 - 0.5) / 4
    with pytest.raises(ValueError, match="at least two points"):
        xm.auc(torch.tensor([1.0]))


def test_pixel_ranks_sort_by_saliency_and_leave_ties_as_numpy_argsort_reversed() -> None:
    saliency = torch.tensor([[[0.2, 0.9], [0.1, 0.5]]])
    assert xm.pixel_ranks(saliency).tolist() == [[[2, 0], [3, 1]]]
    ties = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(0)).round(decimals=1)
    expected = np.argsort(ties.numpy().reshape(2, -1), axis=1)[:, ::-1]
    assert xm.salient_order(ties).tolist() == expected.tolist()
    ranks = xm.pixel_ranks(ties).flatten(1)
    assert ranks.gather(1, torch.from_numpy(expected.copy())).tolist() == [list(range(256))] * 2


def test_default_pace_is_the_authors_8_rows_per_step() -> None:
    assert xm.default_pixels_per_step(224, 224) == 1792  # 28 steps
    assert xm.default_pixels_per_step(112, 112) == 896  # 14 steps


def test_blur_kernel_is_nearly_flat_for_sigma_5_and_blurs_with_zero_padding() -> None:
    for size, low, high in ((5, 0.0400003, 0.0400003), (11, 0.00774, 0.00883)):
        kernel = xm.point_blur_kernel(size, 5.0)
        assert kernel.shape == (size, size) and kernel.dtype == torch.float32
        assert kernel.sum().item() == pytest.approx(1.0, abs=1e-6)
        assert kernel.min().item() == pytest.approx(low, abs=5e-6)
        assert kernel.max().item() == pytest.approx(high, abs=5e-6)
    torch.testing.assert_close(xm.point_blur_kernel(5, 5.0), torch.full((5, 5), 0.04), atol=3e-6, rtol=0)
    ones = xm.gaussian_blur(torch.ones(1, 3, 9, 9), kernel_size=5, sigma=5.0)
    assert ones.shape == (1, 3, 9, 9)
    assert ones[0, 0, 4, 4].item() == pytest.approx(1.0, abs=1e-6)
    assert ones[0, 0, 0, 4].item() == pytest.approx(0.6, abs=1e-5)  # zero padding: 2 of 5 kernel rows lost
    with pytest.raises(ValueError, match="odd"):
        xm.gaussian_blur(ones, kernel_size=4)
    with pytest.raises(ValueError, match="sigma"):
        xm.point_blur_kernel(5, 0.0)


def test_deletion_and_insertion_curves_by_hand() -> None:
    # An all-white 8 x 8 image; the model reads the 6 inner pixels of the top row; 3 pixels per step
    # gives T = ceil(64 / 3) = 22 steps, the last one with a single pixel.
    region = top_row_region()
    score = score_of(Brightness(region))
    images = torch.ones(1, 3, 8, 8)
    classes = torch.tensor([0])
    first = region[None].clone()  # R first, in raster order; the rest after it
    insertion, deletion = xm.insertion_deletion(score, images, classes, first, 3, blur_kernel=3, blur_sigma=1.0)
    assert insertion.shape == deletion.shape == (1, 23)
    expected_deletion = torch.zeros(23)
    expected_deletion[:2] = torch.tensor([1.0, 0.5])
    torch.testing.assert_close(deletion[0], expected_deletion)
    assert xm.auc(deletion)[0].item() == pytest.approx(1 / 22)
    # The blur of a white image with zero padding, on a top-row pixel away from the corners: the kernel
    # loses its top row to the padding, so the pixel becomes 1 minus that row's weight.
    v = 1 - xm.point_blur_kernel(3, 1.0)[0].sum().item()
    assert 0.6 < v < 0.95
    expected_insertion = torch.ones(23)
    expected_insertion[:2] = torch.tensor([v, (1 + v) / 2])
    torch.testing.assert_close(insertion[0], expected_insertion)
    assert xm.auc(insertion)[0].item() == pytest.approx((v / 2 + (1 + v) / 2 + 20 + 0.5) / 22, rel=1e-6)

    # R last (ranks 58..63): deletion reaches it at step 20 (2 of its pixels), 21 (5), 22 (all).
    _, deletion = xm.insertion_deletion(score, images, classes, 1 - first, 3)
    expected = torch.ones(23)
    expected[20:] = torch.tensor([4 / 6, 1 / 6, 0.0])
    torch.testing.assert_close(deletion[0], expected)
    assert xm.auc(deletion)[0].item() == pytest.approx((0.5 + 19 + 4 / 6 + 1 / 6) / 22, rel=1e-6)


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_batched_curves_equal_the_one_step_at_a_time_loop(batch_size: int) -> None:
    torch.manual_seed(0)
    region = (torch.rand(10, 12) > 0.6).float()
    score = score_of(Brightness(region, mean=0.5, std=0.25))
    images = (torch.rand(3, 3, 10, 12) - 0.5) / 0.25
    classes = torch.tensor([0, 1, 0])
    saliency = torch.rand(3, 10, 12).round(decimals=1)  # with ties
    calls = []
    insertion, deletion = xm.insertion_deletion(
        score, images, classes, saliency, 7, blur_kernel=5, batch_size=batch_size, on_batch=calls.append
    )
    steps = math.ceil(120 / 7)
    assert sum(calls) == 3 * 2 * steps  # each curve's shared end point is scored once, up front
    assert max(calls) <= batch_size
    for i in range(3):
        ins, dele = xm.reference_insertion_deletion(score, images[i], classes[i], saliency[i], 7, blur_kernel=5)
        torch.testing.assert_close(insertion[i], ins)
        torch.testing.assert_close(deletion[i], dele)


def test_curves_reject_mismatched_shapes() -> None:
    score = score_of(Brightness(torch.ones(4, 4)))
    with pytest.raises(ValueError, match="saliency must be"):
        xm.insertion_deletion(score, torch.zeros(1, 3, 4, 4), torch.tensor([0]), torch.zeros(1, 4, 5), 2)
    with pytest.raises(ValueError, match="pixels per step"):
        xm.insertion_deletion(score, torch.zeros(1, 3, 4, 4), torch.tensor([0]), torch.zeros(1, 4, 4), 0)


def test_pointing_game_by_hand() -> None:
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True
    saliency = torch.zeros(3, 4, 4)
    saliency[0, 1, 1] = 1.0  # peak on the object
    saliency[1, 3, 3] = 1.0  # peak off the object
    saliency[1, 0, 0] = 0.9
    # image 2: a flat map points nowhere, although its first pixel lies on the object
    assert xm.pointing_game(saliency, masks).tolist() == [True, False, False]


def test_energy_in_mask_by_hand() -> None:
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True
    saliency = torch.zeros(2, 4, 4)
    saliency[0, 0, :2] = 1.0  # 2 on the object
    saliency[0, 1, 0] = 1.0  # 1 more on it
    saliency[0, 3, 3] = 1.0  # 1 off it
    torch.testing.assert_close(xm.energy_in_mask(saliency, masks), torch.tensor([0.75, 0.0]))
    with pytest.raises(ValueError, match="same shape"):
        xm.energy_in_mask(saliency, masks[:, :3])
