"""The service benchmarks: the in-process work and the load run, stage means from the service's histograms, and
the live stages, PNG levels and batching delays against a real service."""

from __future__ import annotations

import math

import pytest
from prometheus_client import generate_latest

from benchmarks.harness import make_images
from benchmarks.serving import (
    SECTIONS,
    batch_delays,
    batch_profile,
    change,
    histogram_totals,
    load,
    overlay_png_levels,
    request_stages,
    stage_means,
    work_in_process,
)
from service.metrics import Metrics


def test_in_process_work_gives_request_latency_and_batch_rates(tiny_model) -> None:
    result = work_in_process(tiny_model, make_images(4, 30, width=45), batch_size=8, requests=16, seconds=5)
    assert 0 < result["request_p50_ms"] <= result["request_p99_ms"]
    assert result["run_only"] > 0 and result["serial_decode"] > 0


@pytest.mark.slow
def test_load_run_reports_work_concurrency_overload_and_recovery(tiny_model) -> None:
    report = load(tiny_model, requests=200, seconds=2, images=4, overload_concurrency=16)
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


def exposition(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_stage_means_are_per_request_differences_between_scrapes() -> None:
    metrics = Metrics()
    metrics.request_seconds.labels(route="/classify").observe(1.0)  # before the phase: must not count
    metrics.decode_seconds.observe(1.0)
    before = histogram_totals(exposition(metrics))
    for _ in range(2):
        metrics.request_seconds.labels(route="/classify").observe(0.020)
        metrics.decode_seconds.observe(0.001)
        metrics.preprocess_seconds.observe(0.0005)
        metrics.queue_wait_seconds.observe(0.005)
        metrics.inference_seconds.observe(0.010)
        metrics.encode_seconds.labels(attention="grid").observe(0.0002)
    metrics.request_seconds.labels(route="/metrics").observe(0.5)  # another route
    after = histogram_totals(exposition(metrics))
    means = stage_means(change(before, after), "grid")
    expected = {"decode": 1.0, "preprocess": 0.5, "queue wait": 5.0, "inference": 10.0, "encode": 0.2, "request": 20.0}
    for stage, value in expected.items():
        assert means[stage] == pytest.approx(value), stage
    assert means["rest"] == pytest.approx(20.0 - 16.7)
    assert (
        stage_means(change(before, after), "overlay")["encode"] == 0
    )  # the encode histogram is read for the mode asked


def test_batch_profile_reads_size_run_time_and_busy_share() -> None:
    metrics = Metrics()
    before = histogram_totals(exposition(metrics))
    metrics.batch(8, 0.030)
    metrics.batch(4, 0.020)
    profile = batch_profile(change(before, histogram_totals(exposition(metrics))), seconds=0.1)
    assert profile == pytest.approx({"batches": 2, "mean_batch": 6.0, "run_ms": 25.0, "busy": 0.5})
    with pytest.raises(ValueError, match="no batch ran"):
        batch_profile(change(before, before), seconds=1.0)


def test_stage_means_refuse_a_phase_without_requests() -> None:
    totals = histogram_totals(exposition(Metrics()))
    with pytest.raises(ValueError, match="no /classify request"):
        stage_means(change(totals, totals), "grid")


@pytest.mark.slow
def test_live_stages_and_png_levels(tiny_model) -> None:
    stages = request_stages(tiny_model, requests=6, seconds=20, concurrency=2)
    for mode in ("none", "grid", "overlay"):
        assert stages["single"][mode]["statuses"] == {"200": 6}
        measured = stages["single"][mode]["stages_ms"]
        assert measured["decode"] > 0 and measured["inference"] > 0 and measured["encode"] > 0
        assert measured["request"] >= measured["inference"] + measured["decode"]
    loaded = stages["loaded"]
    assert loaded["statuses"] == {"200": 12} and 1 <= loaded["mean_batch"] <= 2 and 0 < loaded["busy"] < 1
    levels = overlay_png_levels(tiny_model, 4, 20, rounds=1, concurrency=2, before_level=9, after_level=0)
    assert levels["before"]["png_level"] == 9 and levels["after"]["png_level"] == 0
    assert levels["after"]["png_bytes"] > levels["before"]["png_bytes"] > 0  # level 0 stores, 9 compresses
    assert levels["after"]["c2_images_per_second"] > 0


def test_batch_delays_measure_each_delay_at_each_concurrency(tiny_model) -> None:
    result = batch_delays(tiny_model, [0, 30], seconds=1, rounds=1)
    assert set(result["delays_ms"]) == {"0", "30"}
    for by_concurrency in result["delays_ms"].values():
        assert set(by_concurrency) == {"1", "8", "32"}
        for row in by_concurrency.values():
            assert row["throughput"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"] and row["mean_batch"] >= 1
    # A delay lets images from 32 clients gather; with none, a free model takes whatever is there.
    assert result["delays_ms"]["30"]["32"]["mean_batch"] > 1
    text = "\n".join(SECTIONS[3].render(result, {}))
    assert "| delay ms | concurrency |" in text and "| 30 | 32 |" in text
