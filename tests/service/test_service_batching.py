"""Dynamic batching and overload through the real app: shared session runs, 503 when full, 504 when late."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

from tests.service.servicetools import COLOURS, count_runs, solid_png

NAMES = list(COLOURS)


def post(client: TestClient, name: str):
    return client.post("/classify", files=[("file", (f"{name}.png", solid_png(COLOURS[name])))])


def test_concurrent_requests_are_served_in_fewer_runs_with_their_own_results(app_client) -> None:
    client = app_client(max_batch_size=8, max_batch_delay_ms=400)
    session = count_runs(client)
    names = [NAMES[i % len(NAMES)] for i in range(8)]
    with ThreadPoolExecutor(len(names)) as pool:
        responses = list(pool.map(lambda name: post(client, name), names))
    assert [r.status_code for r in responses] == [200] * len(names)
    assert [r.json()["predictions"][0]["top_k"][0]["label"] for r in responses] == names
    assert len(session.batches) < len(names) and sum(session.batches) == len(names)
    assert "castream_batch_size_images_count" in client.get("/metrics").text


def wait_for_runs(session, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(session.batches) < count and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(session.batches) >= count


def test_full_queue_answers_503_at_once_and_the_service_recovers(app_client) -> None:
    client = app_client(max_batch_size=1, max_batch_delay_ms=0, max_queue=1, max_images_per_request=1, retry_after_s=2)
    session = count_runs(client, delay_s=0.5)
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(post, client, "red")
        wait_for_runs(session, 1)  # the first image is inside the model
        queued = pool.submit(post, client, "green")
        while client.app.state.runtime.batcher.depth < 1:
            time.sleep(0.005)
        refused = post(client, "blue")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
        assert refused.json()["code"] == "queue_full"
        assert running.result().status_code == 200 and queued.result().status_code == 200
    assert post(client, "dark").json()["predictions"][0]["top_k"][0]["label"] == "dark"
    assert 'castream_rejections_total{reason="queue_full"} 1.0' in client.get("/metrics").text


def test_a_request_that_waits_past_its_deadline_gets_504_and_is_never_run(app_client) -> None:
    client = app_client(max_batch_size=1, max_batch_delay_ms=0, request_timeout_ms=100)
    session = count_runs(client, delay_s=0.6)
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(post, client, "red")
        wait_for_runs(session, 1)
        late = post(client, "green")
        assert late.status_code == 504 and late.json()["code"] == "timeout"
        assert running.result().status_code == 200
    assert session.batches == [1]
    assert 'castream_rejections_total{reason="timeout"} 1.0' in client.get("/metrics").text
