"""The insertion/deletion benchmark runs from its command line, and its implementations agree."""

from __future__ import annotations

import pytest

from benchmarks.__main__ import main
from benchmarks.insertion_deletion import run


def test_benchmark_runs_small_and_all_implementations_agree(capsys: pytest.CaptureFixture) -> None:
    result = run(images=2, naive_images=1, size=32, backbone="resnet18", batch_size=8, pixels_per_step=128)
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
        run(images=1, naive_images=2)
