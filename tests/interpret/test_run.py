"""The evaluation run: the images it explains, and the scores it gives where the data has no masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
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


def test_the_selection_split_is_its_own_images_and_the_report_names_it(synthetic_checkpoint: Path) -> None:
    state = checkpoint.load(synthetic_checkpoint)
    chosen = run.evaluation_images(state, limit=4, seed=0, split="selection")
    reported = run.evaluation_images(state, limit=4, seed=0)
    split = synthetic.generate(state.data.synthetic_spec("selection"))
    index = [int(np.flatnonzero((split.images == p).all(axis=(1, 2, 3)))[0]) for p in chosen.pixels]
    assert chosen.labels.tolist() == split.labels[index].tolist()
    assert np.array_equal(chosen.masks.numpy(), split.masks[index])
    assert not any((reported.pixels == p).all(axis=(1, 2, 3)).any() for p in chosen.pixels)
    options = run.EvalOptions(
        checkpoint=str(synthetic_checkpoint), limit=2, methods=("attention",), split="selection", progress=False
    )
    results, samples, _ = run.run(options)
    assert results.settings["split"] == "selection" and len(samples) == 2
    assert "2 selection-split images" in report.markdown(results)


def test_folder_data_has_no_selection_split(tmp_path: Path) -> None:
    data = DataConfig(kind="imagefolder", root=str(tmp_path), image_size=64, train_count=0, val_count=0)
    state = checkpoint.load(save_checkpoint(tmp_path / "run" / "castream.pt", data))
    with pytest.raises(ValueError, match="only for the synthetic data"):
        run.evaluation_images(state, limit=2, seed=0, split="selection")


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
