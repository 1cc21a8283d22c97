"""The load benchmark: raw ONNX Runtime with the model's own latency, and the whole run against the service."""

from __future__ import annotations

from benchmarks.harness import LoadConfig, make_images
from benchmarks.load import raw_throughput


def test_raw_measurement_includes_batch_one_latency(tiny_model) -> None:
    result = raw_throughput(LoadConfig(model=tiny_model, requests=16, seconds=5), make_images(4, 36))
    assert result["run_only"] > 0 and result["with_preprocessing"] > 0
    assert 0 < result["batch1_p50_ms"] <= result["batch1_p99_ms"]
