"""The sweeps' inputs, both offline sweeps on a tiny model, the service's sweep, and the GPU section's plan."""

from __future__ import annotations

import io

import onnxruntime as ort
import pytest
import torch
from PIL import Image

from benchmarks.scaling import (
    CUDA,
    batch_sweep,
    describe_gpu,
    gpu,
    gpu_plan,
    image_size_sweep,
    photo_jpeg,
    service_batch_sweep,
)


@pytest.mark.parametrize("megapixels", [0.3, 1.0])
def test_photo_jpeg_has_the_requested_size(megapixels: float) -> None:
    data, width, height = photo_jpeg(megapixels)
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and image.size == (width, height)
    assert width * height == pytest.approx(megapixels * 1e6, rel=0.01) and width / height == pytest.approx(4 / 3, 0.01)


def test_batch_sweep_times_every_size(tiny_model) -> None:
    points = batch_sweep(tiny_model, sizes=(1, 4), budget_s=0)
    assert [p["batch_size"] for p in points] == [1, 4]
    for point in points:
        assert point["rounds"] == 3 and 0 < point["p50_ms"] <= point["p99_ms"]
        assert point["images_per_second"] == pytest.approx(point["batch_size"] / point["p50_ms"] * 1000)


def test_service_batch_sweep_fills_batches_from_twice_as_many_clients(tiny_model) -> None:
    points = service_batch_sweep(tiny_model, requests_per_image=2, seconds=3, sizes=(1, 4))
    assert [(p["batch_size"], p["clients"]) for p in points] == [(1, 2), (4, 8)]
    for point in points:
        assert point["statuses"] == {"200": point["requests"]} and point["requests"] == 2 * point["clients"]
        assert point["images_per_second"] > 0 and 0 < point["p50_ms"] <= point["p99_ms"]


def test_image_size_sweep_decodes_and_preprocesses_each_size(tiny_model) -> None:
    points = image_size_sweep(tiny_model, megapixels=(0.02, 0.08), budget_s=0)
    assert [p["megapixels"] for p in points] == [0.02, 0.08]
    assert points[0]["jpeg_bytes"] < points[1]["jpeg_bytes"]
    for point in points:
        assert point["decode_ms"] > 0 and point["preprocess_ms"] > 0
        assert point["total_ms"] == pytest.approx(point["decode_ms"] + point["preprocess_ms"])


def test_gpu_plan_needs_a_device_and_the_cuda_provider() -> None:
    assert gpu_plan(["CPUExecutionProvider"], 0) == (False, "no CUDA device on this machine")
    measurable, reason = gpu_plan(["CPUExecutionProvider"], 1)
    assert not measurable and "onnxruntime-gpu" in reason
    assert gpu_plan([CUDA, "CPUExecutionProvider"], 1) == (True, "")


def test_gpu_follows_the_plan_for_this_machine(tiny_model) -> None:
    measurable, reason = gpu_plan(ort.get_available_providers(), torch.cuda.device_count())
    result = gpu(tiny_model, budget_s=0)
    assert result["measured"] is measurable
    if measurable:
        assert [p["batch_size"] for p in result["sweeps"]["fp32 (CUDA)"]] == [1, 2, 4, 8, 16, 32]
    else:
        assert result == {"measured": False, "reason": reason} and "sweeps" not in result
    assert ("none" in describe_gpu()) is (not torch.cuda.is_available())
