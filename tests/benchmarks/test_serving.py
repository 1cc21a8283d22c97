"""The service benchmarks: the in-process work and the load run, stage means from the service's histograms, and
the live stages, PNG levels and batching delays against a real service."""

from __future__ import annotations

import math

import pytest
from prometheus_client import generate_latest

from benchmarks import serving
from benchmarks.harness import make_images, photo
from benchmarks.serving import (
    SECTIONS,
    TWELVE_MP,
    UPLOADS,
    VARIANTS,
    WORKER_UPLOADS,
    batch_delays,
    batch_profile,
    change,
    histogram_totals,
    load,
    overlay_png_levels,
    phase_seconds,
    request_stages,
    stage_means,
    upload_work,
    work_in_process,
)
from service.metrics import Metrics
from service.model import load_model
from service.preprocess import Preprocessor
from service.settings import Settings


def test_in_process_work_gives_request_latency_and_batch_rates(tiny_model) -> None:
    result = work_in_process(tiny_model, make_images(4, 30, width=45), batch_size=8, requests=16, seconds=5)
    assert 0 < result["request_p50_ms"] <= result["request_p99_ms"]
    assert result["run_only"] > 0 and result["serial_decode"] > 0


def test_one_file_in_process_is_decoded_reduced_preprocessed_and_run(tiny_model) -> None:
    onnx = load_model(tiny_model, ["cpu"], 0, 0)
    work = upload_work(onnx, Preprocessor(onnx.info.preprocessing), photo(640, 480), requests=5, seconds=5)
    assert set(work) == {"p50_ms", "decode_ms", "preprocess_ms", "run_ms"}
    assert all(value > 0 for value in work.values())


def test_phases_last_whole_seconds_long_enough_for_the_files_latency(monkeypatch) -> None:
    monkeypatch.setattr(serving.os, "sched_getaffinity", lambda pid: {0, 1})
    assert phase_seconds(0.005, 1, 1.0) == 1  # a short request: the least
    assert phase_seconds(0.25, 1, 1.0) == 3  # 12 answers alone
    assert phase_seconds(0.1, 8, 1.0) == 2  # 4 answers per client, 8 clients sharing 2 cores
    assert phase_seconds(0.1, 2, 3.0) == 3


def test_uploads_are_labelled_by_pixels_format_and_size() -> None:
    assert UPLOADS["small"].label(23_900) == "0.1 MP JPEG 384x256, 23 KiB"
    assert UPLOADS["12mp_light"].label(880_000) == "12 MP JPEG 4032x3024, 0.84 MiB (light grain, quality 85)"
    assert UPLOADS["2mp_png"].label() == "2 MP PNG 1632x1224"


def test_the_uploads_aims_are_not_measured_without_a_record() -> None:
    aims = [aim for aim in SECTIONS[0].aims(None) if "12 MP" in aim.figure]
    assert len(aims) == 4 and all(aim.met is None for aim in aims)


@pytest.mark.slow
def test_load_quick_budget_reports_work_concurrency_overload_recovery_and_uploads(tiny_model) -> None:
    report = load(tiny_model, **SECTIONS[0].quick)
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
    recovery = report["recovery"]  # after the burst, the first 200 once the queue's backlog has drained
    assert 0 < recovery["first_200_s"] < 30 and recovery["refused_before"] >= 0

    uploads = report["uploads"]
    rows, c = uploads["rows"], uploads["concurrency"]
    assert list(rows) == list(UPLOADS) and uploads["reference"] == "reference"
    for name, row in rows.items():
        assert set(row["statuses"]) == {"200"}, name
        assert row["format"] == UPLOADS[name].kind and row["bytes"] > 0
        assert all(value > 0 for value in row["in_process"].values())
        assert row["c1_plain_stages_ms"]["decode"] > 0 and row["c1_plain_stages_ms"]["request"] > 0
        for figure in ("c1_p50_ms", f"c{c}_images_per_second", "c1_over_reference", "alone_ms", "response_kib"):
            assert set(row[figure]) == set(VARIANTS) and all(value > 0 for value in row[figure].values()), figure
    assert rows["reference"]["c1_over_reference"]["plain"] == pytest.approx(1.0)
    # What the files are, not how fast they went: a light and a grainy phone photo, a PNG of its pixels.
    assert 0.7 < rows["12mp_light"]["bytes"] / 2**20 < 1.1 < 2.5 < rows["12mp"]["bytes"] / 2**20 < 3.1
    assert rows["2mp_png"]["bytes"] > rows["2mp"]["bytes"]
    # An overlay at 448 px is smaller than one at 1024 px where the photo is larger than both.
    assert rows["12mp"]["response_kib"]["overlay_page"] < rows["12mp"]["response_kib"]["overlay_default"]
    workers = uploads["workers"]
    assert set(workers["images_per_second"]) == set(WORKER_UPLOADS)
    assert all(n["1"] > 0 and n["2"] > 0 and n["ratio"] > 0 for n in workers["images_per_second"].values())
    assert workers["processes"]["1"] == 1
    if "workers" in Settings.model_fields:  # a supervisor and its two serving processes
        assert workers["processes"]["2"] >= 3

    aims = SECTIONS[0].aims(report)
    assert sum("12 MP" in aim.figure for aim in aims) == 2 * len(TWELVE_MP)
    assert all(aim.met is not None for aim in aims if "12 MP" in aim.figure)
    text = "\n".join(SECTIONS[0].render(report, {}))
    assert "from `wrk`" in text and "recovered" in text and "did not recover" not in text and "the first 200" in text
    assert "| image | KiB |" in text and "| 2 MP PNG 1632x1224 | " in text and "2 / 1" in text


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
