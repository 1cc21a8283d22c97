"""The evaluation command: options, outputs and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from interpret import evaluate
from tests.interpret.conftest import read_csv
from tests.runs import evaluate_tiny


def test_evaluate_writes_table_csv_json_and_picture(synthetic_checkpoint: Path, tmp_path: Path) -> None:
    rows = evaluate_tiny(synthetic_checkpoint, tmp_path)
    table = (tmp_path / "interpretability.md").read_text()
    assert "| Grad-CAM | GAP |" in table and "Pointing game" in table and "8 steps" in table
    assert "Grad-CAM: AD:" in table  # the CA-vs-GAP comparison for the method run on both poolings
    # The pace asked for is the authors' at 64 px (8 rows of 64 pixels), so the protocol stays unmodified.
    assert "Protocol `ca-stream`" in table and "gkern(5, 5)" in table and "512 pixels per step" in table
    summary = json.loads((tmp_path / "interpretability.json").read_text())
    assert summary["settings"]["images"] == 3 and summary["settings"]["steps"] == 8
    assert summary["settings"]["protocol"] == "ca-stream" and summary["settings"]["overrides"] == []
    assert rows[0]["protocol"] == "ca-stream" and rows[0]["blur_kernel"] == "5" and rows[0]["steps"] == "8"
    assert set(summary["top1"]) == {"gap", "ca"}
    # Synthetic data has masks: the localisation class by class covers the three images, each row its class's.
    by_class = summary["by_class"]
    assert sum(row["images"] for row in by_class.values()) == 3
    assert all(0.0 <= row["gradcam/gap"]["pointing"] <= 100.0 for row in by_class.values())
    assert "## Localisation by class" in table and all(f"| {name} | " in table for name in by_class)
    with Image.open(tmp_path / "interpretability.png") as picture:
        assert picture.format == "PNG"
        assert picture.height > picture.width / 4 * 1.5  # two rows of four panels


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--limit", "0"], "limit must be at least 1"),
        (["--target", "nobody"], "invalid choice"),
        (["--methods", "lime"], "invalid choice"),
        (["--blur-kernel", "0"], "blur_kernel must be at least 1"),
        (["--blur-kernel", "4"], "blur_kernel must be odd"),
        (["--blur-sigma", "0"], "blur_sigma must be positive"),
        (["--pixels-per-step", "0"], "pixels_per_step must be at least 1"),
        (["--protocol", "gaussian"], "invalid choice"),
    ],
)
def test_bad_options_are_refused_with_the_value(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        evaluate.parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_protocols_and_overrides_resolve_to_the_settings_the_table_states() -> None:
    default = evaluate.parse_args([])
    assert default.protocol == "ca-stream"
    assert default.faithfulness_settings(112, 112) | {"pace": None, "tie_order": None} == {
        "protocol": "ca-stream",
        "blur_kernel": 5,
        "blur_sigma": 5.0,
        "pixels_per_step": 896,
        "steps": 14,
        "pace": None,
        "tie_order": None,
        "scorecam_align_corners": True,
        "overrides": [],
    }
    rise = evaluate.parse_args(["--protocol", "rise"]).faithfulness_settings(112, 112)
    assert (rise["blur_kernel"], rise["pixels_per_step"], rise["steps"]) == (11, 1792, 7)
    assert evaluate.parse_args(["--protocol", "rise"]).faithfulness_settings(224, 224)["steps"] == 28
    changed = evaluate.parse_args(["--blur-kernel", "11", "--pixels-per-step", "896"]).faithfulness_settings(112, 112)
    assert changed["protocol"] == "ca-stream (modified)" and changed["overrides"] == ["blur_kernel"]
    assert (changed["blur_kernel"], changed["blur_sigma"], changed["steps"]) == (11, 5.0, 14)


def test_missing_checkpoint_is_an_error_that_says_how_to_make_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert evaluate.main(["--checkpoint", str(tmp_path / "none.pt"), "--no-progress"]) == 2
    assert "python -m training.fit" in caplog.text


@pytest.mark.slow
def test_full_protocol_on_the_tiny_trained_run(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Every method, Score-CAM included, with the default pace, explaining each model's own prediction."""
    argv = ["--checkpoint", str(tiny_checkpoint), "--limit", "2", "--target", "predicted", "--out", str(tmp_path)]
    assert evaluate.main([*argv, "--no-progress"]) == 0
    rows = read_csv(tmp_path / "interpretability.csv")
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
    assert summary["settings"]["steps"] == 8 and summary["settings"]["target"] == "predicted"  # 64 px: 8 rows a step
    assert all(0.0 <= float(r[m]) <= 100.0 for r in rows for m in ("ad", "insertion", "energy"))
