"""The evaluation command: options, data subsets, outputs, and the CA-vs-GAP comparison."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from interpret import evaluate, report, run
from training import checkpoint, synthetic
from training.data import DataConfig, Preprocessing
from training.model import CAStreamNet, ModelConfig


def _save_checkpoint(path: Path, data: DataConfig) -> Path:
    """A ResNet-18 checkpoint with random weights: the evaluation's plumbing does not need a trained model."""
    torch.manual_seed(0)
    model = CAStreamNet(ModelConfig("resnet18", num_classes=len(synthetic.CLASSES)))
    state = {
        "model": model.config.to_dict(),
        "state_dict": model.state_dict(),
        "classes": list(synthetic.CLASSES),
        "preprocessing": Preprocessing(resize=data.image_size, crop=data.image_size).to_dict(),
        "data": data.to_dict(),
        "metrics": {},
    }
    return checkpoint.save(state, path)


@pytest.fixture(scope="module")
def synthetic_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("evaluate")
    return _save_checkpoint(folder / "castream.pt", DataConfig(image_size=64, train_count=10, val_count=20))


def test_samples_are_a_seeded_subset_of_the_validation_split_with_masks(synthetic_checkpoint: Path) -> None:
    state = checkpoint.load(synthetic_checkpoint)
    first = run.load_samples(state, limit=5, seed=3)
    again = run.load_samples(state, limit=5, seed=3)
    other = run.load_samples(state, limit=5, seed=4)
    assert first.images.shape == (5, 3, 64, 64) and first.masks.shape == (5, 64, 64)
    assert first.masks.dtype == torch.bool and first.masks.any()
    torch.testing.assert_close(first.images, again.images)
    assert not torch.equal(first.images, other.images)
    split = synthetic.generate(DataConfig(**state["data"]).synthetic_spec("val"))
    index = [int(np.flatnonzero((split.images == p).all(axis=(1, 2, 3)))[0]) for p in first.pixels]
    assert first.labels.tolist() == split.labels[index].tolist()
    assert np.array_equal(first.masks.numpy(), split.masks[index])


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as file:
        return list(csv.DictReader(file))


def test_evaluate_writes_table_csv_json_and_picture(synthetic_checkpoint: Path, tmp_path: Path) -> None:
    code = evaluate.main(
        [
            "--checkpoint",
            str(synthetic_checkpoint),
            "--limit",
            "3",
            "--methods",
            "gradcam",
            "attention",
            "classmap",
            "--pixels-per-step",
            "512",
            "--grid-images",
            "2",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert code == 0
    rows = _read_csv(tmp_path / "interpretability.csv")
    assert [(r["method"], r["pooling"]) for r in rows] == [
        ("Grad-CAM", "gap"),
        ("Grad-CAM", "ca"),
        ("Raw attention", "ca"),
        ("Class-specific map", "ca"),
    ]
    for row in rows:
        assert row["images"] == "3"
        for metric in ("ad", "ag", "ai", "insertion", "deletion", "pointing", "energy"):
            assert 0.0 <= float(row[metric]) <= 100.0
    table = (tmp_path / "interpretability.md").read_text()
    assert "| Grad-CAM | GAP |" in table and "Pointing game" in table and "8 steps" in table
    assert "Grad-CAM: AD:" in table  # the CA-vs-GAP comparison for the method run on both poolings
    summary = json.loads((tmp_path / "interpretability.json").read_text())
    assert summary["settings"]["images"] == 3 and summary["settings"]["steps"] == 8
    assert set(summary["top1"]) == {"gap", "ca"}
    with Image.open(tmp_path / "interpretability.png") as picture:
        assert picture.format == "PNG"
        assert picture.height > picture.width / 4 * 1.5  # two rows of four panels


def test_folder_data_without_masks_has_no_localisation_columns(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in synthetic.CLASSES:
            (tmp_path / "data" / split / name).mkdir(parents=True)
            pixels = rng.integers(0, 256, size=(80, 96, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / split / name / "0.png")
    data = DataConfig(kind="imagefolder", root=str(tmp_path / "data"), image_size=64, train_count=0, val_count=0)
    path = _save_checkpoint(tmp_path / "run" / "castream.pt", data)
    options = run.EvalOptions(
        checkpoint=str(path), limit=2, methods=("attention",), pixels_per_step=1024, progress=False
    )
    results, samples, _ = run.run(options)
    assert samples.masks is None and samples.images.shape == (2, 3, 64, 64)
    assert set(results.scores[("attention", "ca")]) == {"ad", "ag", "ai", "insertion", "deletion"}
    paths = report.write(results, samples, path.parent)
    assert "Pointing" not in paths["md"].read_text()
    assert "pointing" not in _read_csv(paths["csv"])[0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--limit", "0"], "limit must be at least 1"),
        (["--target", "nobody"], "invalid choice"),
        (["--methods", "lime"], "invalid choice"),
        (["--blur-kernel", "0"], "blur_kernel must be at least 1"),
    ],
)
def test_bad_options_are_refused_with_the_value(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        evaluate.parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_checkpoint_is_an_error_that_says_how_to_make_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert evaluate.main(["--checkpoint", str(tmp_path / "none.pt"), "--no-progress"]) == 2
    assert "python -m training.fit" in caplog.text


def test_comparison_names_the_winner_of_each_metric_by_hand() -> None:
    def scores(ad: list[float], insertion: list[float]) -> dict[str, torch.Tensor]:
        return {"ad": torch.tensor(ad), "insertion": torch.tensor(insertion)}

    results = run.Results(
        scores={("gradcam", "gap"): scores([0.5, 0.3], [0.6, 0.6]), ("gradcam", "ca"): scores([0.2, 0.2], [0.5, 0.7])},
        correct={"gap": torch.tensor([True, False]), "ca": torch.tensor([True, True])},
        grid={},
        predictions={},
        settings={
            "images": 2,
            "image_size": [8, 8],
            "pixels_per_step": 2,
            "steps": 32,
            "blur_kernel": 11,
            "blur_sigma": 5.0,
        },
    )
    assert results.mean(("gradcam", "gap"), "ad") == pytest.approx(40.0)
    assert results.accuracy("ca") == 100.0
    # AD: CA - GAP = -30 and -10 points: mean -20, paired standard error 10 / sqrt(2). Lower AD is better.
    diff, error = results.paired_difference("gradcam", "ad")
    assert (diff, error) == pytest.approx((-20.0, 10.0))
    line = report.comparison(results)[0]
    assert line.startswith("Grad-CAM: AD: CA beats GAP (-20.00 ± 10.00); insertion: tie (+0.00 ± 10.00)")
    table = report.markdown(results)
    assert "| Grad-CAM | GAP | 40.00 | 60.00 |" in table
    assert "| Grad-CAM | CA | 20.00 | 60.00 |" in table


@pytest.mark.slow
def test_full_protocol_on_the_tiny_trained_run(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Every method, Score-CAM included, with the default pace, explaining each model's own prediction."""
    argv = ["--checkpoint", str(tiny_checkpoint), "--limit", "2", "--target", "predicted", "--out", str(tmp_path)]
    assert evaluate.main([*argv, "--no-progress"]) == 0
    rows = _read_csv(tmp_path / "interpretability.csv")
    assert [(r["method"], r["pooling"]) for r in rows] == [
        ("Grad-CAM", "gap"),
        ("Grad-CAM", "ca"),
        ("Grad-CAM++", "gap"),
        ("Grad-CAM++", "ca"),
        ("Score-CAM", "gap"),
        ("Score-CAM", "ca"),
        ("Raw attention", "ca"),
        ("Class-specific map", "ca"),
    ]
    summary = json.loads((tmp_path / "interpretability.json").read_text())
    assert summary["settings"]["steps"] == 28 and summary["settings"]["target"] == "predicted"
    assert all(0.0 <= float(r[m]) <= 100.0 for r in rows for m in ("ad", "insertion", "energy"))


def test_the_former_command_name_runs_the_same_command() -> None:
    from training import evaluate as former

    assert former.main is evaluate.main and former.parse_args is evaluate.parse_args
