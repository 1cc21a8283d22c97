"""BENCHMARKS.md from real benchmark output (quick budgets): every section, the aims with their verdicts, failures,
skips and the GPU note."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from benchmarks.report import SECTIONS, aims, plot_batches, render
from benchmarks.sections import Aim
from tests.benchmarks.conftest import OFFLINE_SECTIONS


def test_every_section_and_its_command_is_written(quick_results: dict[str, Any]) -> None:
    assert all("result" in quick_results["sections"][name] for name in OFFLINE_SECTIONS), quick_results["sections"]
    text = render(quick_results, "benchmarks/plot.png")
    for section in SECTIONS:
        assert f"## {section.title}" in text, section.title
    for title in ("## Machine", "## Aims"):
        assert title in text
    for command in (
        "python -m benchmarks batch --model",
        "python -m benchmarks int8 --model",
        "python -m benchmarks onnx_speed --backbone resnet18 --image-size 64",
        "python -m benchmarks train_speed --backbone resnet18",
        "python -m benchmarks insertion_deletion --backbone resnet18 --size 32",
    ):
        assert f"Command: `{command}" in text, command
    assert "| CPU used by other processes |" in text and "of the machine during the run |" in text
    assert "![throughput against batch size](benchmarks/plot.png)" in text
    assert "at the start, at most" in text and "as a section started" in text
    assert "| 12 | 4000 x 3000 |" in text  # image sizes
    assert "| 1 | " in text and "| fp32-ca | " in text and "**" in text  # batch sweep, ONNX timings, headline ratios
    assert "Training throughput / forward throughput: **" in text and "Curves equal: yes" in text
    assert text.count("Not run (left out of this run's `--sections`).") == len(SECTIONS) - len(OFFLINE_SECTIONS)
    assert f"on {quick_results['machine']['cpu']}." in text  # the header names the CPU of the run


def test_failures_skips_and_missing_gpu_are_said_not_hidden(quick_results: dict[str, Any]) -> None:
    results = copy.deepcopy(quick_results)
    failed = results["sections"]["onnx_speed"]
    failed["error"] = "RuntimeError: boom"
    del failed["result"]
    results["sections"]["int8"] = {"command": "python -m benchmarks int8", "skipped": "no int8 model at x"}
    text = render(results, None)
    assert "**Failed:** RuntimeError: boom" in text
    assert "Not measured: no int8 model at x" in text
    gpu = results["sections"]["gpu"]["result"]
    if not gpu["measured"]:
        assert f"**Not measured**: {gpu['reason']}. No GPU figure is estimated." in text
    assert "![" not in text


def test_aims_table_gives_a_verdict_for_each_figure(quick_results: dict[str, Any]) -> None:
    text = render(quick_results, None)
    verdicts = {aim.figure: aim.met for aim in aims(quick_results)}
    for figure in (
        "CA / GAP latency, ResNet-50 at 224, batch 1",
        "int8 / fp32 throughput, ResNet-50 at 224",
        "int8 top-1 agreement with fp32 (served model)",
        "stream training / frozen forward throughput",
        "insertion + deletion, batched / one step at a time",
    ):
        assert verdicts[figure] in (True, False), figure  # measured in this run
    assert "| int8 top-1 agreement with fp32 (served model) | 0.995 | >= 0.99 | yes |" in text
    assert "| throughput at concurrency 8 / in-process batch, serial decoding | n/a | >= 1 | not measured |" in text
    assert "| service p50 at concurrency 1 over the in-process work's p50 | n/a | <= 2 ms | not measured |" in text
    assert "| `make bench` wall time, every section (models already built) | n/a |" in text  # not a full run


@pytest.mark.parametrize(
    ("measured", "higher", "met"),
    [
        (1.0, True, True),
        (0.5, True, False),
        (1.0, False, True),
        (2.0, False, False),
        (None, True, None),
        (math.nan, False, None),
    ],
)
def test_aim_verdict(measured: float | None, higher: bool, met: bool | None) -> None:
    assert Aim("x", measured, 1.0, higher).met is met


def test_plot_is_a_png_and_only_written_with_data(quick_results: dict[str, Any], tmp_path) -> None:
    path = tmp_path / "plots" / "batch.png"
    assert plot_batches(quick_results, path)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    empty = copy.deepcopy(quick_results)
    for name in ("batch", "service_batch"):
        empty["sections"].pop(name, None)
    assert not plot_batches(empty, tmp_path / "none.png") and not (tmp_path / "none.png").exists()
