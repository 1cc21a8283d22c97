"""The load benchmark: raw ONNX Runtime with the model's own latency, and the whole run against the service."""

from __future__ import annotations

import math

import pytest

from benchmarks.harness import LoadConfig, make_images
from benchmarks.load import format_report, raw_throughput, run


def test_raw_measurement_includes_batch_one_latency(tiny_model) -> None:
    result = raw_throughput(LoadConfig(model=tiny_model, requests=16, seconds=5), make_images(4, 36))
    assert result["run_only"] > 0 and result["with_preprocessing"] > 0
    assert 0 < result["batch1_p50_ms"] <= result["batch1_p99_ms"]


@pytest.mark.slow
def test_load_script_reports_throughput_latency_and_overload(tiny_model) -> None:
    config = LoadConfig(
        model=tiny_model,
        requests=48,
        seconds=10,
        images=4,
        max_batch_delay_ms=50,  # images linger in the queue, so the overload phase surely overflows it
        overload_queue=1,
        overload_concurrency=16,
        overload_requests=96,
    )
    report = run(config)
    for concurrency in (1, 8):
        phase = report[f"service_c{concurrency}"]
        assert phase["statuses"] == {"200": 48} and phase["throughput"] > 0
        assert 0 < phase["p50_ms"] <= phase["p99_ms"]
    assert report["raw"]["run_only"] > 0 and report["ratio_run_only"] > 0
    burst = report["overload"]
    assert set(burst["statuses"]) <= {"200", "503"} and burst["statuses"].get("503", 0) > 0
    assert burst["retry_after"] == "1" and not math.isnan(burst["rejected_p50_ms"])
    assert report["recovered"] is True
    text = format_report(report)
    assert "ratio service c=8 / raw" in text and "recovered=True" in text
