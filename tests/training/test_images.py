"""A checkpoint's images: chosen by index out of the recorded split, normalised, with pixels and masks aligned."""

from __future__ import annotations

import pytest
import torch

from training import synthetic
from training.checkpoint import Checkpoint
from training.data import DataConfig, Preprocessing
from training.images import load_images
from training.model import ModelConfig


def test_the_chosen_images_come_with_their_pixels_masks_and_preprocessing() -> None:
    data = DataConfig(image_size=32, val_count=10)
    preprocessing = Preprocessing(resize=32, crop=32)
    state = Checkpoint(ModelConfig(), {}, tuple(synthetic.CLASSES), preprocessing, data)  # no weights needed
    sizes: list[int] = []

    def choose(size: int) -> torch.Tensor:
        sizes.append(size)
        return torch.tensor([7, 2])

    chosen = load_images(state, "val", choose)
    split = synthetic.generate(data.synthetic_spec("val"))
    assert sizes == [10] and len(chosen) == 2 and chosen.classes == synthetic.CLASSES
    assert (chosen.pixels == split.images[[7, 2]]).all() and chosen.labels.tolist() == split.labels[[7, 2]].tolist()
    assert torch.equal(chosen.masks, torch.from_numpy(split.masks[[7, 2]]))
    torch.testing.assert_close(chosen.images, preprocessing.normalize(torch.from_numpy(split.images[[7, 2]])))
    assert chosen.mean == preprocessing.mean and chosen.std == preprocessing.std
    with pytest.raises(ValueError, match="unknown split"):
        load_images(state, "test", choose)
