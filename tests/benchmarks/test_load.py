"""The load benchmark: the in-process work, and the whole run against the real service."""

from __future__ import annotations

import math

import pytest

from benchmarks.harness import make_images
from benchmarks.load import SECTIONS, run, work_in_process


def test_in_process_work_gives_request_latency_and_batch_rates(tiny_model) -> None:
    result = work_in_process(tiny_model, make_images(4, 30, width=45), batch_size=8, requests=16, seconds=5)
    assert 0 < result["request_p50_ms"] <= result["request_p99_ms"]
    assert result["run_only"] > 0 and result["serial_decode"] > 0


@pytest.mark.slow
def test_load_run_reports_work_concurrency_overload_and_recovery(tiny_model) -> None:
    report = run(tiny_model, requests=200, seconds=2, images=4, overload_concurrency=16)
    for concurrency in (1, 8, 32):
        phase = report[f"service_c{concurrency}"]
        assert set(phase["statuses"]) == {"200"} and phase["throughput"] > 0
        assert 0 < phase["p50_ms"] <= phase["p99_ms"]
    assert report["work"]["serial_decode"] > 0 and report["ratio_c8_serial_decode"] > 0
    burst = report["overload"]
    assert burst["offered_per_second"] == pytest.approx(2 * report["capacity"])
    assert set(burst["statuses"]) <= {"200", "503"} and 0 <= burst["rejected_share"] <= 1
    assert burst["memory"]["start_mib"] > 0 and not math.isnan(burst["goodput_ratio"])
    assert report["recovered"] is True
    text = "\n".join(SECTIONS[0].render(report, {}))
    assert "from `wrk`" in text and "recovered" in text and "did not recover" not in text
