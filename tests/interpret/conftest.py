"""Checkpoints for the interpretability tests, with random weights: the evaluation's plumbing needs no trained model."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from training import checkpoint, synthetic
from training.data import DataConfig, Preprocessing
from training.model import CAStreamNet, ModelConfig


def save_checkpoint(path: Path, data: DataConfig) -> Path:
    """A ResNet-18 checkpoint with random weights: the evaluation's plumbing does not need a trained model."""
    torch.manual_seed(0)
    model = CAStreamNet(ModelConfig("resnet18", num_classes=len(synthetic.CLASSES)))
    record = checkpoint.Checkpoint(
        model=model.config,
        state_dict=model.state_dict(),
        classes=tuple(synthetic.CLASSES),
        preprocessing=Preprocessing(resize=data.image_size, crop=data.image_size),
        data=data,
    )
    return checkpoint.save(record, path)


@pytest.fixture(scope="module")
def synthetic_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("evaluate")
    return save_checkpoint(folder / "castream.pt", DataConfig(image_size=64, train_count=10, val_count=20))


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as file:
        return list(csv.DictReader(file))
