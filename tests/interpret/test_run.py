"""The evaluation run: the images it explains, and the scores it gives where the data has no masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from interpret import report, run
from tests.interpret.conftest import read_csv, save_checkpoint
from training import checkpoint, synthetic
from training.data import DataConfig


def test_samples_are_a_seeded_subset_of_the_validation_split_with_masks(synthetic_checkpoint: Path) -> None:
    state = checkpoint.load(synthetic_checkpoint)
    first = run.evaluation_images(state, limit=5, seed=3)
    again = run.evaluation_images(state, limit=5, seed=3)
    other = run.evaluation_images(state, limit=5, seed=4)
    assert first.images.shape == (5, 3, 64, 64) and first.masks.shape == (5, 64, 64)
    assert first.masks.dtype == torch.bool and first.masks.any()
    torch.testing.assert_close(first.images, again.images)
    assert not torch.equal(first.images, other.images)
    split = synthetic.generate(state.data.synthetic_spec("val"))
    index = [int(np.flatnonzero((split.images == p).all(axis=(1, 2, 3)))[0]) for p in first.pixels]
    assert first.labels.tolist() == split.labels[index].tolist()
    assert np.array_equal(first.masks.numpy(), split.masks[index])


def test_folder_data_without_masks_has_no_localisation_columns(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in synthetic.CLASSES:
            (tmp_path / "data" / split / name).mkdir(parents=True)
            pixels = rng.integers(0, 256, size=(80, 96, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / split / name / "0.png")
    data = DataConfig(kind="imagefolder", root=str(tmp_path / "data"), image_size=64, train_count=0, val_count=0)
    path = save_checkpoint(tmp_path / "run" / "castream.pt", data)
    options = run.EvalOptions(
        checkpoint=str(path), limit=2, methods=("attention",), pixels_per_step=1024, progress=False
    )
    results, samples, _ = run.run(options)
    assert samples.masks is None and samples.images.shape == (2, 3, 64, 64)
    assert set(results.scores[("attention", "ca")]) == {"ad", "ag", "ai", "insertion", "deletion"}
    paths = report.write(results, samples, path.parent)
    assert "Pointing" not in paths["md"].read_text()
    assert "pointing" not in read_csv(paths["csv"])[0]
