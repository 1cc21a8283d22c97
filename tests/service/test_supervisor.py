"""``CASTREAM_WORKERS=2``: one port served by two processes, watched by a parent (real processes, real HTTP).

Which worker answers a connection is the kernel's choice; the tests make it theirs by stopping the other
worker (SIGSTOP): a stopped process cannot accept, so the running one answers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.service.servicetools import COLOURS, REPO, LiveServer, free_port, save_model, solid_png


def worker_pids(server: LiveServer) -> list[int]:
    """The parent's serving processes (multiprocessing's resource tracker, its other child, left out)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == server.process.pid and b"--multiprocessing-fork" in command:
            pids.append(int(entry.name))
    return sorted(pids)


def state(pid: int) -> str:
    """A process's state letter (R, S, T, Z...), or "gone"."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


@contextmanager
def stopped(*pids: int) -> Iterator[None]:
    """The processes ``pids`` stopped (SIGSTOP) inside the block, continued after it whatever happens."""
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: all(state(pid) in "Tt" for pid in pids), "the processes to stop")
        yield
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:  # killed meanwhile
                pass


def wait_for(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.02)


def classify(server: LiveServer, colour: str = "red") -> httpx.Response:
    # A new connection each time (no pool): a kept-alive one would stay with the worker that accepted it.
    return httpx.post(f"{server.url}/classify", files=[("file", ("x.png", solid_png(COLOURS[colour])))], timeout=30)


def scrape(server: LiveServer) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def answered(metrics: dict[tuple[str, tuple], float], route: str, status: str = "200") -> float:
    return metrics.get(("castream_requests_total", (("route", route), ("status", status))), 0.0)


def synced(server: LiveServer) -> None:
    """One more answer from the only running worker: what it did for earlier requests, counting them included,
    is done (one event loop, one request after another); this answer's own count may still be on its way."""
    assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200


def test_both_workers_answer_and_every_scrape_counts_every_request(live_server) -> None:
    server = live_server(CASTREAM_WORKERS="2")
    first, second = worker_pids(server)
    for idle, colours in ((first, ("red", "green", "blue")), (second, ("dark", "red"))):
        with stopped(idle):  # only the other one can accept
            for colour in colours:
                response = classify(server, colour)
                assert response.status_code == 200
                assert response.json()["predictions"][0]["top_k"][0]["label"] == colour
            synced(server)
    for idle in (first, second):
        with stopped(idle):
            metrics = scrape(server)
        # Each worker's scrape counts every request answered by both.
        assert answered(metrics, "/classify") == 5
        assert metrics[("castream_images_classified_total", ())] == 5
        assert metrics[("castream_queue_wait_seconds_count", ())] == 5
        assert metrics[("castream_queue_depth", ())] == 0
        assert metrics[("castream_ready", ())] == 1
        info = [key for key in metrics if key[0] == "castream_model_info"]
        assert len(info) == 1 and dict(info[0][1])["name"] == "tiny-ca"  # one series, not one per worker
        for figure in ("attention_entropy", "attention_peak", "top1_probability"):
            assert metrics[(f"castream_{figure}_count", (("model", "tiny-ca"),))] == 5
        band = [key for key in metrics if key[0] == "castream_explanation_reference"]
        assert len(band) == 3 * 5, "each recorded quantile is one series, not one per worker"
    assert not any(name.startswith("python_gc_") for name, _ in metrics)  # per-process series that cannot be summed
    assert metrics[("process_resident_memory_bytes", ())] > 0


def test_a_worker_that_is_not_ready_makes_the_service_unready_and_a_dead_one_is_replaced(live_server) -> None:
    server = live_server(CASTREAM_WORKERS="2", CASTREAM_DRAIN_DELAY_S="120")
    first, second = worker_pids(server)
    with stopped(second):
        assert classify(server, "green").status_code == 200  # answered by the first, which dies below
        synced(server)
    with stopped(server.process.pid):  # the parent, so that it neither restarts nor resets anything meanwhile
        os.kill(first, signal.SIGTERM)  # the first worker alone drains, and stays up for 120 s
        wait_for(lambda: httpx.get(f"{server.url}/readyz", timeout=30).status_code == 503, "a 503 from /readyz")
        with stopped(first):  # only the second, itself warm, can answer
            readiness = httpx.get(f"{server.url}/readyz", timeout=30)
            assert readiness.status_code == 503 and readiness.json()["code"] == "draining"
            assert httpx.get(f"{server.url}/v2/health/ready", timeout=30).status_code == 400
            assert scrape(server)[("castream_ready", ())] == 0
            assert classify(server).status_code == 200  # it still serves
            synced(server)
            os.kill(first, signal.SIGKILL)
    # The parent, continued, finds the first worker killed, starts another, and the service becomes ready again.
    server.wait_ready()
    replacement = next(pid for pid in worker_pids(server) if pid != second)
    assert replacement != first and state(first) == "gone"
    with stopped(second):
        assert classify(server, "blue").json()["predictions"][0]["top_k"][0]["label"] == "blue"
        assert answered(scrape(server), "/classify") == 3  # the dead worker's answer still counts
    log = server.stop()
    assert server.process.returncode == 0
    assert f"worker 0 (pid {first}) was killed by SIGKILL; starting another" in log


def test_sigterm_drains_every_worker_finishes_requests_and_every_process_exits(live_server) -> None:
    server = live_server(CASTREAM_WORKERS="2", CASTREAM_DRAIN_DELAY_S="3", CASTREAM_MAX_BATCH_DELAY_MS="1500")
    pids = worker_pids(server)
    metrics_dir = Path(environment(pids[0])["PROMETHEUS_MULTIPROC_DIR"])
    assert metrics_dir.is_dir() and {environment(pid)["PROMETHEUS_MULTIPROC_DIR"] for pid in pids} == {str(metrics_dir)}
    result: dict[str, httpx.Response] = {}
    slow = threading.Thread(target=lambda: result.update(response=classify(server)))  # ~1.5 s in a batcher
    slow.start()
    wait_for(lambda: scrape(server)[("castream_queue_depth", ())] == 1, "the request to reach a queue")
    server.process.send_signal(signal.SIGTERM)
    wait_for(lambda: httpx.get(f"{server.url}/readyz", timeout=30).status_code == 503, "a 503 from /readyz")
    assert httpx.get(f"{server.url}/readyz", timeout=30).json()["code"] == "draining"
    slow.join(30)
    assert result["response"].status_code == 200
    server.process.wait(60)
    log = server.process.stdout.read()
    assert server.process.returncode == 0, log
    assert [state(pid) for pid in pids] == ["gone", "gone"]  # reaped by the parent before it exited
    assert not metrics_dir.exists()
    assert log.count("SIGTERM: draining for 3.0 s") == 2 and log.count("Application shutdown complete") == 2


def test_a_worker_that_does_not_stop_in_time_is_killed(live_server) -> None:
    server = live_server(CASTREAM_WORKERS="2", CASTREAM_DRAIN_DELAY_S="0", CASTREAM_SHUTDOWN_TIMEOUT_S="1")
    first, second = worker_pids(server)
    os.kill(first, signal.SIGSTOP)  # it cannot act on the signal the parent passes on
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(60)  # the bound is 0 + 2 x 1 + 5 s
    log = server.process.stdout.read()
    assert server.process.returncode == 1, log
    assert f"worker 0 (pid {first}) did not stop within 7 s; killing it" in log
    assert [state(first), state(second)] == ["gone", "gone"]


def environment(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().split("=", 1) for entry in entries if b"=" in entry)


def test_workers_stop_when_the_parent_is_killed(live_server) -> None:
    server = live_server(CASTREAM_WORKERS="2")
    pids = worker_pids(server)
    metrics_dir = Path(environment(pids[0])["PROMETHEUS_MULTIPROC_DIR"])
    server.process.kill()
    server.process.wait(10)
    # Whoever adopts them reaps them, or leaves them as zombies: either way they are no longer running.
    wait_for(lambda: all(state(pid) in ("gone", "Z") for pid in pids), "the orphaned workers to exit")
    shutil.rmtree(metrics_dir)  # a killed parent cannot remove it


def run_service(env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    variables = {"CASTREAM_HOST": "127.0.0.1", "CASTREAM_PORT": str(free_port()), "CASTREAM_WORKERS": "2", **env}
    return subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=REPO,
        env={**os.environ, **variables},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_model_that_cannot_load_fails_start_up_without_restarts(tmp_path) -> None:
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(b"\x08\x07garbage")
    result = run_service({"CASTREAM_MODEL_PATH": str(path)})
    output = result.stdout + result.stderr
    assert result.returncode == 3
    assert "cannot load ONNX model" in output and "before it was ready; stopping the service" in output
    assert output.count("worker 0 started") == 1 and output.count("worker 1 started") == 1


def test_a_failed_warm_up_stops_the_service(tmp_path) -> None:
    model = save_model(tmp_path / "three.onnx", classes=json.dumps(["a", "b", "c"]))  # the graph gives 4 logits
    result = run_service({"CASTREAM_MODEL_PATH": str(model)})
    output = result.stdout + result.stderr
    assert result.returncode == 3
    assert "warm-up failed" in output and "stopping the service" in output


def test_settings_are_checked_before_any_worker_starts(model_path) -> None:
    result = run_service({"CASTREAM_MODEL_PATH": str(model_path), "CASTREAM_WORKERS": "4", "CASTREAM_MAX_QUEUE": "40"})
    assert result.returncode == 2 and "worker 0 started" not in result.stderr
    assert "CASTREAM_MAX_QUEUE=40 is the whole service's queue, and each of CASTREAM_WORKERS=4" in result.stderr


def test_a_port_in_use_fails_start_up(model_path, live_server) -> None:
    server = live_server(CASTREAM_WORKERS="2")
    result = run_service({"CASTREAM_MODEL_PATH": str(model_path), "CASTREAM_PORT": str(server.port)})
    assert result.returncode == 3 and f"cannot listen on 127.0.0.1 port {server.port}" in result.stderr
