"""Training data: the preprocessing record shared with the model file, and the synthetic cache on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from service import contract
from training.data import DataConfig, Preprocessing, load_synthetic


def test_preprocessing_is_the_contract_record_with_its_transforms() -> None:
    preprocessing = Preprocessing(resize=72, crop=64)
    assert isinstance(preprocessing, contract.Preprocessing)
    record = preprocessing.to_dict()
    assert tuple(record) == contract.PREPROCESSING_FIELDS
    assert Preprocessing.from_dict(record) == preprocessing
    assert Preprocessing.from_dict({**record, **contract.INPUT_LAYOUT}) == preprocessing  # as a model file holds it
    pixels = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    transformed = preprocessing.eval_transform()(Image.fromarray(pixels).resize((72, 72)))
    assert transformed.shape == (3, 64, 64)
    normalised = preprocessing.normalize(torch.from_numpy(pixels)[None])
    assert normalised.shape == (1, 3, 64, 64) and torch.isfinite(normalised).all()


def test_the_synthetic_cache_is_written_once_whole_and_read_back(tmp_path: Path) -> None:
    spec = DataConfig(image_size=32, val_count=12).synthetic_spec("val")
    first = load_synthetic(spec, tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # no temporary file left behind
    again = load_synthetic(spec, tmp_path)
    for name in ("images", "labels", "masks"):
        assert np.array_equal(getattr(first, name), getattr(again, name))
