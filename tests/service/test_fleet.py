"""The workers' shared board, the probes of an app that is one worker among several, and the service-wide
process series."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import ProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.fleet import Board, Phase, Slot
from service.procstats import ServiceProcessCollector
from tests.service.servicetools import COLOURS, make_settings, solid_png


def test_the_service_is_ready_only_when_every_worker_is() -> None:
    board = Board(3)
    assert board.service_phase() is Phase.starting  # fresh slots start out starting
    for index in range(3):
        board.publish(index, Phase.ready)
    assert board.service_phase() is Phase.ready
    board.publish(1, Phase.draining)
    assert board.service_phase() is Phase.draining
    board.publish(2, Phase.failed)
    assert board.service_phase() is Phase.failed  # failed, then draining, then starting
    board.publish(1, Phase.ready)
    board.publish(2, Phase.ready)
    board.reset(0)  # its worker exited: the slot waits for the next one
    assert board.phase_of(0) is Phase.starting and board.service_phase() is Phase.starting
    board.publish(0, Phase.ready)
    board.stop()
    assert board.service_phase() is Phase.draining


def test_the_board_lists_the_parent_then_the_workers_holding_a_slot() -> None:
    board = Board(2)
    parent = board.pids()[0]
    board.claim(1, 4242)
    assert board.pids() == [parent, 4242]
    board.reset(1)
    assert board.pids() == [parent]
    with pytest.raises(ValueError, match="workers=0"):
        Board(0)


@pytest.fixture
def worker_client(model_path: Path, tmp_path: Path) -> Iterator[tuple[TestClient, Board]]:
    """The real app as worker 0 of two, on a board where the test plays worker 1."""
    board = Board(2)
    app = create_app(make_settings(model_path, workers=2), Slot(board, 0, str(tmp_path)))
    with TestClient(app) as client:
        yield client, board


def ready_gauge(client: TestClient) -> float:
    families = text_string_to_metric_families(client.get("/metrics").text)
    return next(s.value for f in families for s in f.samples if s.name == "castream_ready")


def test_a_warm_worker_answers_the_probes_for_its_siblings(worker_client: tuple[TestClient, Board]) -> None:
    client, board = worker_client
    deadline = time.monotonic() + 20
    while board.phase_of(0) is not Phase.ready:  # the app publishes its own phase once its model is warm
        assert time.monotonic() < deadline, "worker 0 never became ready"
        time.sleep(0.02)
    starting = client.get("/readyz")  # worker 1 is still starting
    assert starting.status_code == 503 and starting.json()["code"] == "starting"
    assert client.get("/v2/health/ready").status_code == 400
    assert client.get("/healthz").status_code == 200
    assert ready_gauge(client) == 0
    assert client.post("/classify", files=[("file", solid_png(COLOURS["red"]))]).status_code == 200  # it serves
    board.publish(1, Phase.ready)
    assert client.get("/readyz").json() == {"status": "ready"}
    assert client.get("/v2/health/ready").status_code == 200 and ready_gauge(client) == 1
    board.publish(1, Phase.draining)
    assert client.get("/readyz").json()["code"] == "draining"
    board.publish(1, Phase.failed)
    assert client.get("/healthz").status_code == 503 and client.get("/readyz").json()["code"] == "failed"
    board.publish(1, Phase.ready)
    board.stop()
    draining = client.get("/readyz")
    assert draining.status_code == 503 and draining.json()["code"] == "draining" and ready_gauge(client) == 0
    assert board.phase_of(0) is Phase.ready  # the parent's stop is the service's; a worker drains on its own signal


def stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "Tt"


def test_process_series_sum_the_service_processes() -> None:
    sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        for sleeper in sleepers:  # stopped, so that their figures hold still while both collectors read them
            sleeper.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while not all(stopped(s.pid) for s in sleepers):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        pids = [s.pid for s in sleepers]
        combined = {f.name: f.samples[0].value for f in ServiceProcessCollector(lambda: pids).collect()}
        each = [
            {f.name: f.samples[0].value for f in ProcessCollector(pid=lambda pid=pid: pid, registry=None).collect()}
            for pid in pids
        ]
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()
    assert set(combined) == set(each[0])
    for name in ("process_resident_memory_bytes", "process_virtual_memory_bytes", "process_open_fds"):
        assert combined[name] == each[0][name] + each[1][name], name
    cpu = "process_cpu_seconds"
    assert combined[cpu] == pytest.approx(each[0][cpu] + each[1][cpu])
    assert combined["process_start_time_seconds"] == pytest.approx(each[0]["process_start_time_seconds"])
