"""BENCHMARKS.md from a results dict: every section, the aims with their verdicts, failures and the GPU note."""

from __future__ import annotations

import math
from typing import Any

import pytest

from benchmarks.render import Aim, aims, plot_batches, render


def phase(throughput: float, p50: float) -> dict[str, Any]:
    return {"requests": 100, "statuses": {"200": 100}, "throughput": throughput, "p50_ms": p50, "p99_ms": p50 * 1.5}


def stage_row(encode: float) -> dict[str, Any]:
    stages = {"decode": 0.5, "preprocess": 0.4, "queue wait": 5.0, "inference": 10.0, "encode": encode, "rest": 1.0}
    return {"client_p50_ms": 19.0, "client_p99_ms": 25.0, "stages_ms": stages | {"request": sum(stages.values())}}


def ok(command: str, result: Any) -> dict[str, Any]:
    return {"command": command, "result": result, "seconds": 12.0, "others_share": 0.03}


def sample_results() -> dict[str, Any]:
    png = {
        "encode_ms": 15.0,
        "request_ms": 35.0,
        "c1_p50_ms": 36.0,
        "c1_p99_ms": 40.0,
        "c8_images_per_second": 40.0,
        "c8_p50_ms": 200.0,
        "png_bytes": 35000.0,
    }
    sweep = [
        {"batch_size": b, "rounds": 5, "p50_ms": 10.0 * b, "p99_ms": 12.0 * b, "images_per_second": 100.0}
        for b in (1, 2, 4)
    ]
    timing = {"median_ms": 10.0, "images_per_s": 100.0}
    sections = {
        "load": ok(
            "python -m benchmarks.load --model m.onnx",
            {
                "config": {
                    "concurrency": 8,
                    "batch_size": 8,
                    "images": 32,
                    "overload_concurrency": 48,
                    "overload_queue": 4,
                },
                "raw": {"run_only": 100.0, "with_preprocessing": 90.0, "batch1_p50_ms": 10.0, "batch1_p99_ms": 12.0},
                "service_c1": phase(50.0, 18.0),
                "service_c8": phase(90.0, 80.0),
                "ratio_run_only": 0.9,
                "ratio_with_preprocessing": 1.0,
                "overhead_c1_p50_ms": 8.0,
                "overload": phase(20.0, 300.0)
                | {
                    "statuses": {"200": 10, "503": 90},
                    "rejected_p50_ms": 2.0,
                    "rejected_p99_ms": 9.0,
                    "retry_after": "1",
                },
                "recovery": {"statuses": {"200": 20}, "p50_ms": 15.0, "readyz": 200},
                "recovered": True,
            },
        ),
        "stages": ok(
            "python -m benchmarks.stages",
            {
                "single": {"grid": stage_row(0.2), "overlay": stage_row(3.0)},
                "loaded": {
                    "concurrency": 8,
                    "images_per_second": 150.0,
                    "mean_batch": 3.8,
                    "run_ms": 38.0,
                    "busy": 0.8,
                    "stages_ms": stage_row(0.1)["stages_ms"],
                },
            },
        ),
        "overlay_png": ok(
            "python -m benchmarks.stages",
            {
                "concurrency": 8,
                "rounds": 2,
                "before": png | {"png_level": 6},
                "after": png | {"png_level": 1, "encode_ms": 3.0, "png_bytes": 39000.0},
            },
        ),
        "batch": ok("python -m benchmarks.scaling", sweep),
        "service_batch": ok("python -m benchmarks.scaling", [p | {"p50_ms": 20.0} for p in sweep]),
        "image_size": ok(
            "python -m benchmarks.scaling",
            [
                {
                    "megapixels": 12.0,
                    "width": 4000,
                    "height": 3000,
                    "jpeg_bytes": 2_800_000,
                    "rounds": 5,
                    "decode_ms": 70.0,
                    "preprocess_ms": 30.0,
                    "total_ms": 100.0,
                    "images_per_second_per_core": 10.0,
                }
            ],
        ),
        "precision": {"command": "python -m benchmarks.precision", "skipped": "no int8 model at models/x.onnx"},
        "onnx_speed": ok(
            "python -m benchmarks.onnx_speed",
            {
                "backbone": "resnet50",
                "image_size": 224,
                "threads": 1,
                "ca_over_gap_latency": 1.01,
                "ca_over_gap_batch_throughput": 1.02,
                "int8_over_fp32_throughput": 1.8,
                "int8_over_fp32_latency": 1.7,
                "timings": {
                    f"batch{b}": dict.fromkeys(("fp32-gap", "fp32-ca", "int8-ca"), timing) | {"rounds": 9}
                    for b in (1, 8)
                },
            },
        ),
        "train_speed": ok(
            "python -m benchmarks.train_speed",
            {
                "backbone": "resnet50",
                "image_size": 224,
                "batch_size": 16,
                "threads": 2,
                "precision": "bf16",
                "rounds": 9,
                "forward_ms": 900.0,
                "train_step_ms": 1000.0,
                "forward_images_per_second": 17.8,
                "train_images_per_second": 16.0,
                "ratio": 0.9,
                "aim": 0.8,
            },
        ),
        "insertion_deletion": {"command": "python -m benchmarks.insertion_deletion", "error": "RuntimeError: boom"},
        "gpu": ok("python -m benchmarks.report --sections gpu", {"measured": False, "reason": "no CUDA device here"}),
    }
    return {
        "command": "python -m benchmarks.report",
        "generated": "2026-01-01 00:00 UTC",
        "quick": False,
        "wall_s": 600.0,
        "others_share": 0.015,
        "machine": {
            "cpu": "Test CPU",
            "usable_cores": 2,
            "logical_cores": 2,
            "memory_gib": 16.0,
            "platform": "Linux",
            "versions": {"python": "3.11"},
            "gpu": "none",
            "git": "abc",
        },
        "model": {
            "path": "m.onnx",
            "name": "castream-resnet18-ca",
            "backbone": "resnet18",
            "pooling": "ca",
            "precision": "fp32",
            "crop": 112,
            "classes": 10,
        },
        "load_average": {"start": [0.5, 0.4, 0.3], "end": [1.2, 0.6, 0.4], "section_starts": [0.5, 0.9, 0.7]},
        "sections": sections,
    }


def test_every_section_and_its_command_is_written() -> None:
    text = render(sample_results(), "benchmarks/plot.png")
    for title in (
        "## Machine",
        "## Aims",
        "## Service against raw ONNX Runtime",
        "## Where the time goes",
        "## Made faster",
        "## Cost against batch size",
        "## Cost against image size",
        "## int8 against fp32",
        "## CA against GAP",
        "## Stream training",
        "## Insertion and deletion",
        "## GPU",
    ):
        assert title in text, title
    for command in (
        "python -m benchmarks.load --model m.onnx",
        "python -m benchmarks.stages",
        "python -m benchmarks.scaling",
        "python -m benchmarks.train_speed",
    ):
        assert f"Command: `{command}`" in text
    assert "`python -m benchmarks.load --model m.onnx` (12 s in this run; other processes used 3% of the CPU" in text
    assert "| CPU used by other processes | 1.5 % of the machine during the run |" in text
    assert "![throughput against batch size](benchmarks/plot.png)" in text
    assert "0.50 at the start, at most 0.90 as a section started, 1.20 at the end" in text
    assert "| 4000 x 3000 | 2.80 | 70.0 | 30.0 | 100.0 | 10.0 |" in text
    assert "**encode** (15.0 ms" in text  # the slowest stage of ours, at the old PNG level
    assert "batches of 3.8 images on average; one `session.run` took 38.0 ms (alone, a batch of 4 takes 40.0 ms" in text
    assert "running 80 % of the time" in text
    assert "| encode ms per request (server) | 15.00 | 3.00 | 0.20x |" in text


def test_failures_skips_and_missing_gpu_are_said_not_hidden() -> None:
    text = render(sample_results(), None)
    assert "**Failed:** RuntimeError: boom" in text
    assert "Not measured: no int8 model at models/x.onnx" in text
    assert "**Not measured**: no CUDA device here. No GPU figure is estimated." in text
    assert "![" not in text


def test_aims_table_gives_a_verdict_for_each_figure() -> None:
    text = render(sample_results(), None)
    assert "| service / raw ONNX Runtime throughput, concurrency 8 | 0.9 | >= 0.85 | yes |" in text
    assert "| service p50 at concurrency 1 minus the model's own batch-1 p50 | 8 ms | <= 15 ms | yes |" in text
    assert "| int8 / fp32 throughput, ResNet-50 at 224 | 1.8 | >= 2 | **no** |" in text
    assert "| int8 top-1 agreement with fp32 (served model) | n/a | >= 0.99 | not measured |" in text
    assert "| insertion + deletion, batched / one step at a time | n/a | >= 5x | not measured |" in text
    verdicts = {aim.figure: aim.met for aim in aims(sample_results())}
    assert verdicts["stream training / frozen forward throughput"] is True
    assert verdicts["CA / GAP latency, ResNet-50 at 224, batch 1"] is True


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


def test_plot_is_a_png_and_only_written_with_data(tmp_path) -> None:
    path = tmp_path / "plots" / "batch.png"
    assert plot_batches(sample_results(), path)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    empty = sample_results()
    for name in ("batch", "service_batch"):
        del empty["sections"][name]
    assert not plot_batches(empty, tmp_path / "none.png") and not (tmp_path / "none.png").exists()
