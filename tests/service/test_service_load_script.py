"""benchmarks/load.py runs end to end, bounded, and reports every figure (importable, as `make bench` uses it)."""

from __future__ import annotations

import math

import pytest

from benchmarks.load import LoadConfig, format_report, make_images, run


@pytest.mark.slow
def test_load_script_reports_throughput_latency_and_overload(model_path) -> None:
    config = LoadConfig(
        model=model_path,
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


def test_generated_images_are_deterministic_jpegs() -> None:
    first, second = make_images(3, 40), make_images(3, 40)
    assert first == second and all(image.startswith(b"\xff\xd8") for image in first)
