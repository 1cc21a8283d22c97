"""Real images for verification and calibration, from the checkpoint's own data set description."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from export.metadata import read
from export.pipeline import DEFAULT_SAMPLES, ExportReport, sample_count
from export.samples import gallery, load_samples
from training import synthetic
from training.checkpoint import Checkpoint
from training.data import DataConfig, Preprocessing
from training.images import load_images
from training.model import ModelConfig


def _state(data: DataConfig, size: int, classes: tuple[str, ...] = synthetic.CLASSES) -> Checkpoint:
    model = ModelConfig(num_classes=len(classes))  # no weights: only the data set description is read
    return Checkpoint(model, {}, classes, Preprocessing(resize=size, crop=size), data)


def test_synthetic_samples_are_normalised_and_deterministic(tmp_path: Path) -> None:
    state = _state(DataConfig(kind="synthetic", image_size=32, train_count=40, val_count=20, seed=5), 32)
    val = load_samples(state, "val", 8, cache_dir=tmp_path)
    assert val.images.shape == (8, 3, 32, 32) and val.images.dtype == np.float32
    assert val.images.flags["C_CONTIGUOUS"] and val.labels.dtype == np.int64
    assert -3 < val.images.mean() < 3 and val.images.std() > 0.1  # normalised, not raw pixels
    np.testing.assert_array_equal(load_samples(state, "val", 20, cache_dir=tmp_path).images[:8], val.images)
    train = load_samples(state, "train", 30, cache_dir=tmp_path)
    assert len(train) == 30 and len(set(train.labels.tolist())) > 5  # a shuffled subset covers the classes
    np.testing.assert_array_equal(load_samples(state, "train", 30, cache_dir=tmp_path).images, train.images)
    assert len(load_samples(state, "val", 1000, cache_dir=tmp_path)) == 20


def test_imagefolder_samples_use_the_inference_transform(tmp_path: Path) -> None:
    for split in ("train", "val"):
        for index, name in enumerate(("cat", "dog")):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for k in range(3):
                Image.new("RGB", (48, 40), (60 * index + 20 * k, 90, 200)).save(folder / f"{k}.png")
    state = _state(DataConfig(kind="imagefolder", root=str(tmp_path / "data"), image_size=24, seed=0), 24)
    val = load_samples(state, "val", 4)
    assert val.images.shape == (4, 3, 24, 24)
    assert val.labels.tolist() == [0, 0, 0, 1]  # validation images in folder order
    train = load_samples(state, "train", 6)
    assert sorted(train.labels.tolist()) == [0, 0, 0, 1, 1, 1]


def test_missing_imagefolder_and_bad_requests_say_what_to_do(tmp_path: Path) -> None:
    state = _state(DataConfig(kind="imagefolder", root=str(tmp_path / "gone"), image_size=24), 24)
    with pytest.raises(FileNotFoundError, match="mount it at the same path"):
        load_samples(state, "val", 4)
    with pytest.raises(ValueError, match="unknown split 'test'"):
        load_samples(state, "test", 4)
    with pytest.raises(ValueError, match="at least one image"):
        load_samples(state, "val", 0)


def test_the_gallery_is_one_validation_image_per_class_in_class_order(tmp_path: Path) -> None:
    state = _state(DataConfig(kind="synthetic", image_size=32, train_count=8, val_count=60, seed=2), 32)
    samples = gallery(state, 4, cache_dir=tmp_path)
    assert [s["label"] for s in samples] == list(synthetic.CLASSES[:4])
    every = load_images(state, "val", lambda size: torch.arange(size), cache_dir=tmp_path)
    for sample in samples:
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(sample["png"]))))
        assert pixels.shape == (32, 32, 3)
        label = synthetic.CLASSES.index(sample["label"])
        matches = [i for i in range(len(every)) if np.array_equal(every.pixels[i], pixels)]
        assert matches and all(every.labels[i] == label for i in matches)  # a real image of that class, lossless
    assert gallery(state, 4, cache_dir=tmp_path) == samples  # the same on every export
    assert gallery(state, 0, cache_dir=tmp_path) == []


def test_an_export_of_synthetic_data_carries_its_description_and_samples(ca_export: ExportReport) -> None:
    props = read(ca_export.path)
    assert props["trained_on"].startswith("castream's synthetic shapes: 10 classes (disk, square,")
    assert [s["label"] for s in props["samples"]] == list(synthetic.CLASSES)


def test_own_data_travels_in_the_model_file_only_when_asked() -> None:
    folder = DataConfig(kind="imagefolder", root="/data/birds")
    assert sample_count(None, folder) == 0 and sample_count(3, folder) == 3
    assert sample_count(None, DataConfig()) == DEFAULT_SAMPLES and sample_count(0, DataConfig()) == 0
