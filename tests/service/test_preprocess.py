"""The service's Pillow/NumPy preprocessing against torchvision's eval transform on the same images."""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from torchvision import transforms

from service.imaging import decode
from service.metadata import Preprocessing
from service.preprocess import Preprocessor, crop_origin, resized_size
from tests.service.servicetools import PREPROCESSING


def torchvision_input(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    pipeline = transforms.Compose(
        [
            transforms.Resize(
                prep.resize, interpolation=transforms.InterpolationMode(prep.interpolation), antialias=True
            ),
            transforms.CenterCrop(prep.crop),
            transforms.ToTensor(),
            transforms.Normalize(prep.mean, prep.std),
        ]
    )
    return pipeline(image).numpy()


def textured(size: tuple[int, int], seed: int) -> Image.Image:
    """Smooth gradients plus noise, so resampling differences would show."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(1, width - 1), y * 255 / max(1, height - 1), (x + y) % 64 * 4], axis=-1)
    noisy = base + rng.normal(0, 25, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


SIZES = [(50, 40), (40, 50), (37, 91), (36, 36), (200, 120), (33, 500), (1000, 35), (20, 24)]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize(("resize", "crop"), [(36, 32), (32, 32), (28, 32)], ids=["resize>crop", "equal", "padded"])
def test_inputs_match_torchvision(interpolation: str, resize: int, crop: int) -> None:
    prep = Preprocessing.from_dict({**PREPROCESSING, "resize": resize, "crop": crop, "interpolation": interpolation})
    ours = Preprocessor(prep)
    for seed, size in enumerate(SIZES):
        image = textured(size, seed)
        expected = torchvision_input(image, prep)
        got = ours(image).input
        assert got.shape == expected.shape == (3, crop, crop) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=f"{size} {interpolation}")


def test_top1_is_identical_through_the_model(model_path) -> None:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    prep = Preprocessing.from_dict(PREPROCESSING)
    ours = Preprocessor(prep)
    images = [textured(size, seed) for seed, size in enumerate(SIZES * 4)]
    encoded = []
    for image in images:  # through the file round trip the service sees
        out = io.BytesIO()
        image.save(out, format="PNG")
        encoded.append(out.getvalue())
    batch_ours = np.stack([ours(decode(data, 10**7)).input for data in encoded])
    batch_tv = np.stack([torchvision_input(Image.open(io.BytesIO(data)).convert("RGB"), prep) for data in encoded])
    np.testing.assert_allclose(batch_ours, batch_tv, atol=1e-5)
    logits_ours, logits_tv = (session.run(["logits"], {"image": b})[0] for b in (batch_ours, batch_tv))
    assert np.array_equal(logits_ours.argmax(1), logits_tv.argmax(1))
    assert len(set(logits_tv.argmax(1).tolist())) > 1  # the images really differ in class


def test_size_rules_follow_torchvision() -> None:
    assert resized_size(50, 40, 36) == (45, 36)
    assert resized_size(37, 91, 36) == (36, 88)
    assert [crop_origin(n, 32) for n in (36, 37, 32, 29, 31)] == [2, 2, 0, -1, 0]
