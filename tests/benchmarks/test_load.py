"""The load benchmark: the in-process work, wrk's phases (closed-loop and paced), the Python fallback, the whole run."""

from __future__ import annotations

import asyncio
import io
import math
import shutil
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.harness import LoadConfig, closed_loop, make_images, service_process
from benchmarks.load import SECTIONS, body_files, run, work_in_process, wrk_phase


def test_in_process_work_gives_request_latency_and_batch_rates(tiny_model) -> None:
    result = work_in_process(LoadConfig(model=tiny_model, requests=16), make_images(4, 30, width=45), seconds=5)
    assert 0 < result["request_p50_ms"] <= result["request_p99_ms"]
    assert result["run_only"] > 0 and result["serial_decode"] > 0


def test_images_can_have_one_fixed_size() -> None:
    sizes = {Image.open(io.BytesIO(data)).size for data in make_images(3, 30, width=45)}
    assert sizes == {(45, 30)}


def _bodies(tmp_path: Path, count: int = 2) -> list[Path]:
    return body_files(tmp_path, make_images(count, 40))


def test_wrk_closed_loop_phase_counts_every_answer_with_its_latency(tiny_model, tmp_path: Path) -> None:
    assert shutil.which("wrk"), "wrk is missing: `make wrk` installs it"
    with service_process(LoadConfig(model=tiny_model)) as server:
        phase = wrk_phase(server.port, _bodies(tmp_path), connections=2, requests=40, seconds=5)
        assert server.rss_mib() > 0 and server.ready_s > 0
    assert phase.statuses == {"200": 40}  # 20 per connection, then each thread stops
    assert 0 < phase.p50_ms <= phase.p99_ms and phase.throughput > 0 and phase.retry_after is None


def test_wrk_paced_phase_overflows_a_short_queue_into_quick_503s(tiny_model, tmp_path: Path) -> None:
    # Images linger 200 ms for company, so a queue of one image overflows under a paced stream.
    config = LoadConfig(model=tiny_model, max_batch_delay_ms=200)
    env = {"CASTREAM_MAX_QUEUE": "1", "CASTREAM_MAX_IMAGES_PER_REQUEST": "1"}
    with service_process(config, **env) as server:
        phase = wrk_phase(server.port, _bodies(tmp_path), connections=4, requests=200, seconds=2, rate=50)
    assert set(phase.statuses) == {"200", "503"} and phase.statuses["503"] > phase.statuses["200"]
    assert phase.retry_after == "1" and phase.rejected_p50_ms is not None
    assert phase.requests < 150  # paced at 50/s for 2 s: far fewer than the cap


def test_python_client_paces_requests_as_json_bodies(tiny_model) -> None:
    with service_process(LoadConfig(model=tiny_model)) as server:
        phase = asyncio.run(closed_loop(server.port, make_images(2, 40), 2, 10, 10, "top_k=1", "json", rate=20))
    assert phase.statuses == {"200": 10}
    assert phase.seconds >= 9 / 20  # the tenth request is not sent before 0.45 s


@pytest.mark.slow
def test_load_run_reports_work_concurrency_overload_and_recovery(tiny_model) -> None:
    config = LoadConfig(model=tiny_model, requests=200, seconds=2, images=4, image_width=60, image_height=40,
                        overload_concurrency=16)  # fmt: skip
    report = run(config)
    assert report["client"] == "wrk"
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
