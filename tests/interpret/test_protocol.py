"""The evaluation against an independent re-implementation of the published protocols, written here.

The reference below follows the definitions (METHOD.md, "Evaluation protocol") with plain numpy and
the model's own forward pass; it calls none of ``interpret``'s helpers. Its blur kernel comes from
scipy.ndimage, as the published codes build it. The project's functions must agree with it to 1e-4
on maps with plateaus (a coarse map upsampled, where the order of equal pixels decides which change
first) and on maps without ties.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torch import Tensor, nn

from interpret import metrics, protocol, run
from training import synthetic
from training.data import Preprocessing
from training.images import LabelledImages
from training.model import CAStreamNet, ModelConfig

TOLERANCE = 1e-4


# ---------------------------------------------------------------- the reference, from the definitions


def reference_kernel(size: int, sigma: float) -> np.ndarray:
    """scipy's Gaussian filter of a single point at the centre of a size x size grid."""
    grid = np.zeros((size, size))
    grid[size // 2, size // 2] = 1.0
    return gaussian_filter(grid, sigma, mode="reflect", truncate=4.0)


def reference_blur(image: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """Each channel convolved with the float32 kernel, zeros around the image; (3, H, W) -> (3, H, W)."""
    weights = torch.zeros(3, 3, size, size)
    for channel in range(3):  # channel c of the output reads channel c of the input only
        weights[channel, channel] = torch.from_numpy(reference_kernel(size, sigma).astype(np.float32))
    blurred = F.conv2d(torch.from_numpy(image)[None], weights, padding=size // 2)
    return blurred[0].numpy()


def reference_order(saliency: np.ndarray, ties: str = "numpy") -> np.ndarray:
    """Flat pixel indices, most salient first: numpy's argsort reversed, or (to show ties matter) raster order."""
    flat = saliency.astype(np.float32).reshape(1, -1)
    if ties == "numpy":
        return np.argsort(flat, axis=1)[0, ::-1]
    return np.argsort(-flat[0], kind="stable")


def reference_curves(
    probability, image: np.ndarray, saliency: np.ndarray, step: int, size: int, sigma: float, ties: str = "numpy"
) -> tuple[float, float]:
    """Insertion and deletion AUC of one image: ``step`` pixels per step, one forward pass per step."""
    channels, height, width = image.shape
    pixels = height * width
    steps = (pixels + step - 1) // step
    order = reference_order(saliency, ties)
    result = []
    for start, finish in ((reference_blur(image, size, sigma), image), (image, np.zeros_like(image))):
        current = start.reshape(channels, pixels).copy()
        target = finish.reshape(channels, pixels)
        scores = []
        for k in range(steps + 1):
            scores.append(probability(current.reshape(channels, height, width)))
            changed = order[k * step : (k + 1) * step]
            current[:, changed] = target[:, changed]
        curve = np.array(scores)
        result.append((curve.sum() - curve[0] / 2 - curve[-1] / 2) / steps)
    return result[0], result[1]


def reference_drop_gain_increase(
    probability, image: np.ndarray, saliency: np.ndarray, mean: np.ndarray, std: np.ndarray
) -> tuple[float, float, float]:
    """AD, AG and AI terms of one image: the image masked by its saliency in pixel space (black where 0)."""
    masked = ((image * std + mean) * saliency[None] - mean) / std
    p, o = probability(image), probability(masked.astype(np.float32))
    drop = max(0.0, p - o) / p if p > 0 else 0.0
    gain = max(0.0, o - p) / (1 - p) if p < 1 else 0.0
    return drop, gain, float(o > p)


# ---------------------------------------------------------------- models and maps


class TinyNet(nn.Module):
    """A small classifier with sharp outputs, so that the probability moves with every pixel changed."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(16, 5)

    def forward(self, images: Tensor) -> Tensor:
        return 20 * self.head(self.features(images).mean(dim=(2, 3)))


def probability_of(model: nn.Module, cls: int):
    """The reference's view of a model: one image (3, H, W) as numpy -> softmax probability of ``cls``."""

    @torch.no_grad()
    def probability(image: np.ndarray) -> float:
        return model(torch.from_numpy(np.ascontiguousarray(image))[None]).softmax(1)[0, cls].item()

    return probability


def maps_with_plateaus(count: int, size: int, seed: int) -> Tensor:
    """Coarse 4 x 4 maps, ReLU and min-max normalised, upsampled bilinearly: flat borders, flat zeros."""
    coarse = torch.randn(count, 1, 4, 4, generator=torch.Generator().manual_seed(seed)).clamp(min=0)
    low, high = coarse.amin(dim=(2, 3), keepdim=True), coarse.amax(dim=(2, 3), keepdim=True)
    coarse = (coarse - low) / (high - low)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def maps_without_ties(count: int, size: int, seed: int) -> Tensor:
    maps = torch.rand(count, size, size, generator=torch.Generator().manual_seed(seed))
    assert all(len(m.unique()) == m.numel() for m in maps)
    return maps


MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def synthetic_images(count: int, size: int, seed: int) -> LabelledImages:
    split = synthetic.generate(synthetic.SyntheticSpec(size=size, count=count, seed=seed))
    preprocessing = Preprocessing(resize=size, crop=size, mean=MEAN, std=STD)
    return LabelledImages(
        images=preprocessing.normalize(torch.from_numpy(split.images)).contiguous(),
        labels=torch.from_numpy(split.labels).long(),
        pixels=split.images,
        masks=torch.from_numpy(split.masks),
        classes=split.classes,
        preprocessing=preprocessing,
    )


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize("size, sigma", [(5, 5.0), (11, 5.0), (3, 1.0), (7, 0.8), (9, 2.5), (1, 5.0)])
def test_blur_kernel_is_scipys_gaussian_filter_of_a_point(size: int, sigma: float) -> None:
    ours = metrics.point_blur_kernel(size, sigma)
    theirs = torch.from_numpy(reference_kernel(size, sigma).astype(np.float32))
    torch.testing.assert_close(ours, theirs, atol=1e-8, rtol=0)


def test_the_protocols_kernels_and_paces() -> None:
    ca, rise = protocol.get("ca-stream"), protocol.get("rise")
    assert (ca.blur_kernel, ca.blur_sigma, rise.blur_kernel, rise.blur_sigma) == (5, 5.0, 11, 5.0)
    assert ca.pixels_per_step(224, 224) == 1792 and ca.pixels_per_step(112, 112) == 896  # 28 and 14 steps
    assert rise.pixels_per_step(224, 224) == 1792 and rise.pixels_per_step(112, 112) == 1792  # 28 and 7 steps
    assert ca.scorecam_align_corners and rise.scorecam_align_corners
    assert protocol.DEFAULT == "ca-stream"
    with pytest.raises(ValueError, match="unknown protocol 'gaussian'"):
        protocol.get("gaussian")


@pytest.mark.parametrize("name", ["ca-stream", "rise"])
@pytest.mark.parametrize("maps", ["plateaus", "no ties"])
def test_metrics_agree_with_the_reference(name: str, maps: str) -> None:
    size, count = 48, 3
    chosen = protocol.get(name)
    step = chosen.pixels_per_step(size, size)
    model = TinyNet().eval()
    samples = synthetic_images(count, size, seed=1)
    images, classes = samples.images, torch.tensor([0, 2, 4])
    saliency = (maps_with_plateaus if maps == "plateaus" else maps_without_ties)(count, size, seed=2)

    def score(batch: Tensor, cls: Tensor) -> Tensor:
        with torch.no_grad():
            return model(batch).softmax(1).gather(1, cls[:, None])[:, 0]

    insertion, deletion = metrics.insertion_deletion(
        score,
        images,
        classes,
        saliency,
        step,
        blur_kernel=chosen.blur_kernel,
        blur_sigma=chosen.blur_sigma,
        batch_size=5,
    )
    p = score(images, classes)
    o = score(metrics.mask_in_pixel_space(images, saliency, MEAN, STD), classes)
    terms = metrics.drop_gain_increase(p, o)
    ours = np.stack(
        [metrics.auc(insertion), metrics.auc(deletion), terms["drop"], terms["gain"], terms["increase"]], axis=1
    )

    mean, std = np.array(MEAN, np.float32)[:, None, None], np.array(STD, np.float32)[:, None, None]
    theirs, raster = [], []
    for i in range(count):
        probability = probability_of(model, int(classes[i]))
        image, sal = images[i].numpy(), saliency[i].numpy()
        args = (probability, image, sal, step, chosen.blur_kernel, chosen.blur_sigma)
        theirs.append([*reference_curves(*args), *reference_drop_gain_increase(probability, image, sal, mean, std)])
        raster.append(reference_curves(*args, ties="raster"))
    theirs = np.array(theirs)
    np.testing.assert_allclose(ours, theirs, atol=TOLERANCE, rtol=0)
    # The case is not a trivial one: the curves move, and on plateaus the order of ties changes them.
    assert np.ptp(theirs[:, :2]) > 0.05
    if maps == "plateaus":
        assert np.abs(np.array(raster) - theirs[:, :2]).max() > 10 * TOLERANCE
    else:
        np.testing.assert_allclose(np.array(raster), theirs[:, :2], atol=1e-7)


@pytest.mark.parametrize("name", ["ca-stream", "rise"])
def test_the_evaluation_scores_what_the_reference_scores(name: str) -> None:
    """The whole evaluation (protocol settings, maps, both poolings) against the reference on its own maps."""
    torch.manual_seed(0)
    model = CAStreamNet(ModelConfig("resnet18", num_classes=len(synthetic.CLASSES))).eval()
    with torch.no_grad():
        model.backbone.classifier.weight.mul_(5)  # random weights; sharper outputs make the check stricter
    count = 2
    samples = synthetic_images(count, 64, seed=3)
    options = run.EvalOptions(
        methods=("gradcam", "attention"), protocol=name, target="predicted", grid_images=count, progress=False
    )
    results = run.explain_and_score(model, samples, options, torch.device("cpu"))
    chosen = protocol.get(name)
    step = chosen.pixels_per_step(64, 64)
    settings = results.settings
    assert settings["protocol"] == name and settings["overrides"] == []
    assert (settings["blur_kernel"], settings["blur_sigma"]) == (chosen.blur_kernel, chosen.blur_sigma)
    assert (settings["pixels_per_step"], settings["steps"]) == (step, -(-64 * 64 // step))

    mean, std = np.array(MEAN, np.float32)[:, None, None], np.array(STD, np.float32)[:, None, None]
    spread = []
    for key in [("gradcam", "gap"), ("gradcam", "ca"), ("attention", "ca")]:
        pooling = key[1]

        def forward(images: Tensor, pooling: str = pooling) -> Tensor:
            return model(images, pooling=pooling).logits

        for i in range(count):
            probability = probability_of(forward, int(results.predictions[pooling][i]))
            image, sal = samples.images[i].numpy(), results.grid[key][i].numpy()
            insertion, deletion = reference_curves(probability, image, sal, step, chosen.blur_kernel, chosen.blur_sigma)
            drop, gain, increase = reference_drop_gain_increase(probability, image, sal, mean, std)
            expected = {"insertion": insertion, "deletion": deletion, "ad": drop, "ag": gain, "ai": increase}
            got = {metric: results.scores[key][metric][i].item() for metric in expected}
            assert got == pytest.approx(expected, abs=TOLERANCE), (key, i)
            spread.append(insertion - deletion)
    assert np.ptp(spread) > 0.01  # the probabilities move: agreement is not between constants


def test_score_cam_masks_are_upsampled_like_upsampling_bilinear_2d() -> None:
    from interpret import saliency

    features = torch.rand(1, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    images = torch.ones(1, 3, 12, 12)
    seen = []

    def mask(images: Tensor, maps: Tensor) -> Tensor:
        seen.append(maps)
        return images

    def score(images: Tensor, classes: Tensor) -> Tensor:
        return torch.ones(classes.shape)

    saliency.score_cam(features, images, torch.tensor([[0]]), score, mask, batch_size=2)

    def min_max(maps: Tensor) -> Tensor:
        low, high = maps.amin(dim=(1, 2), keepdim=True), maps.amax(dim=(1, 2), keepdim=True)
        return (maps - low) / (high - low)

    torch.testing.assert_close(seen[0], min_max(nn.UpsamplingBilinear2d(size=(12, 12))(features)[0]))
    # Half-pixel centres would give other masks: the choice is visible here.
    other = F.interpolate(features, size=(12, 12), mode="bilinear", align_corners=False)[0]
    assert (seen[0] - min_max(other)).abs().max() > 0.01
