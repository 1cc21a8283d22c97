"""The explanation benchmarks: ratios to castream, and the insertion/deletion implementations agreeing, run from
the command line (what they run and report, not how fast)."""

from __future__ import annotations

import pytest

from benchmarks import explanations
from benchmarks.__main__ import main
from benchmarks.explanations import insertion_deletion


@pytest.mark.slow  # exports ResNet-18 and runs Grad-CAM once: ~30 s
def test_explanation_benchmark_reports_ratios_to_castream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(explanations.MODELS, "resnet18", (64, 10))
    [result] = explanations.explain_speed(
        ("resnet18",), ("castream", "gradcam", "scorecam"), images=2, budget_s=0.0, threads=1, scorecam_models=()
    )
    rows = {row["method"]: row for row in result["rows"]}
    assert set(rows) == {"castream", "gradcam"} and result["not_timed"] == ["scorecam"]
    assert rows["castream"]["castream_speedup"] == 1.0 and rows["gradcam"]["images"] == 1
    assert rows["gradcam"]["castream_speedup"] == pytest.approx(
        rows["castream"]["images_per_second"] / rows["gradcam"]["images_per_second"], rel=0.01
    )
    table = "\n".join(explanations.SECTIONS[0].render([result], {}))
    assert "| resnet18 64 px | pytorch-grad-cam GradCAM |" in table and "1 (reference)" in table
    assert "Not timed in this run: pytorch-grad-cam ScoreCAM on resnet18" in table and "ScoreCAM |" not in table


def test_explanation_benchmark_refuses_an_unknown_model() -> None:
    with pytest.raises(ValueError, match="unknown models \\['resnet34'\\]"):
        explanations.explain_speed(("resnet34",), ("castream",))


def test_benchmark_runs_small_and_all_implementations_agree(capsys: pytest.CaptureFixture) -> None:
    result = insertion_deletion(
        images=2, naive_images=1, size=32, backbone="resnet18", batch_size=8, pixels_per_step=128
    )
    assert result["equal"] and result["max_abs_difference"] <= 1e-4
    assert result["steps"] == 8  # 32 * 32 / 128
    assert result["naive_images_per_second"] > 0 and result["speedup"] > 0
    argv = ["insertion_deletion", "--quick", "--size", "32", "--images", "2", "--naive-images", "1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert text.startswith("## Insertion and deletion") and "Curves equal: yes" in text
    assert "Command: `python -m benchmarks insertion_deletion --backbone resnet18 --size 32 --images 2" in text


def test_benchmark_refuses_more_looped_than_batched_images() -> None:
    with pytest.raises(ValueError, match="naive_images <= images"):
        insertion_deletion(images=1, naive_images=2)
