"""The insertion/deletion benchmark stays importable and runnable, and its implementations agree."""

from __future__ import annotations

import json

import pytest

from benchmarks.insertion_deletion import main


def test_benchmark_runs_small_and_all_implementations_agree(capsys: pytest.CaptureFixture) -> None:
    argv = ["--size", "32", "--images", "2", "--backbone", "resnet18", "--batch-size", "8", "--pixels-per-step", "128"]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["equal"] and result["max_abs_difference"] <= 1e-4
    assert result["steps"] == 8  # 32 * 32 / 128
    assert result["naive_images_per_second"] > 0 and result["speedup"] > 0


def test_benchmark_refuses_more_looped_than_batched_images() -> None:
    with pytest.raises(SystemExit):
        main(["--images", "1", "--naive-images", "2"])
