"""Queue room is reserved once a body has arrived: slow clients hold none, and overload is still refused at once.

The real app is served by uvicorn in this process, on a loopback port: raw sockets can then send a request's
head and only part of its body, while the test watches the batcher's reservations and can slow the model down.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from service.app import create_app
from service.batcher import Batcher
from tests.service.servicetools import COLOURS, CountingSession, free_port, make_settings, solid_png

RED = solid_png(COLOURS["red"])
V2 = "/v2/models/tiny-ca/infer"
RED_B64 = base64.b64encode(RED).decode()
# A one-image request for each route, as JSON, so that a raw socket can send it in parts.
BODIES = {
    "/classify": json.dumps({"images": [RED_B64]}).encode(),
    V2: json.dumps(
        {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": [RED_B64]}]}
    ).encode(),
}
# One image at a time in the queue: a single request that held room would refuse every other.
# One image in the model at a time and room for one more in the queue.
ONE_IMAGE = {
    "max_queue": 1, "max_images_per_request": 1, "max_batch_size": 1, "max_batch_delay_ms": 0, "concurrent_batches": 1,
}  # fmt: skip


@dataclass
class Served:
    app: FastAPI
    server: uvicorn.Server
    thread: threading.Thread
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def batcher(self) -> Batcher:
        return self.app.state.lifecycle.serving.batcher

    def in_flight(self) -> float:
        return self.app.state.metrics.registry.get_sample_value("castream_requests_in_flight")

    def seen(self) -> float:
        """Inference requests the app has taken in: in flight, or answered."""
        answered = sum(
            sample.value
            for family in self.app.state.metrics.registry.collect()
            if family.name == "castream_requests"
            for sample in family.samples
            if sample.name == "castream_requests_total" and sample.labels["route"] != "/readyz"
        )
        return self.in_flight() + answered

    def slow_model(self, delay_s: float) -> CountingSession:
        """Each batch now takes ``delay_s``: the test can hold one image in the model and one in the queue."""
        model = self.app.state.lifecycle.serving.model
        model.session = CountingSession(model.session, delay_s)
        return model.session


@pytest.fixture
def serve(model_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(**overrides: object) -> Served:
        app = create_app(make_settings(model_path, **overrides))
        port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning")
        server = uvicorn.Server(config)
        served = Served(app, server, threading.Thread(target=server.run, daemon=True), port)
        served.thread.start()
        started.append(served)
        wait_until(lambda: _ready(served.url), "the server never became ready")
        return served

    yield start
    for served in started:
        served.server.should_exit = True
        served.thread.join(15)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def wait_until(condition: Callable[[], bool], message: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.01)


def start_body(port: int, path: str, sent: int = 5) -> tuple[socket.socket, bytes]:
    """A connection that has sent the head of a JSON request and the first ``sent`` bytes of its body."""
    body = BODIES[path]
    connection = socket.create_connection(("127.0.0.1", port), timeout=20)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    connection.sendall(head.encode() + body[:sent])
    return connection, body[sent:]


def answer(connection: socket.socket) -> tuple[int, dict[str, str], dict]:
    """The status, headers and JSON body the server answers on ``connection``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(4096)
        assert chunk, f"the connection closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = connection.recv(4096)
        assert chunk, f"the connection closed inside the body: {data!r}"
        body += chunk
    return int(status_line.split()[1]), headers, json.loads(body)


def send(url: str, path: str) -> httpx.Response:
    return httpx.post(f"{url}{path}", content=BODIES[path], headers={"Content-Type": "application/json"}, timeout=20)


def test_clients_trickling_their_bodies_hold_no_room_and_end_with_408(serve) -> None:
    served = serve(**ONE_IMAGE, body_timeout_s=2)
    slow = [start_body(served.port, path) for path in ("/classify", V2, "/classify")]
    try:
        wait_until(lambda: served.seen() >= len(slow), "the slow requests never reached the app")
        assert served.in_flight() == len(slow)  # none refused: their bodies are still arriving
        assert served.batcher.reserved == 0  # and no room is theirs yet
        # The queue holds one image, and three requests are being read; others are still served.
        for path in ("/classify", V2):
            response = send(served.url, path)
            assert response.status_code == 200, response.text
        answers = [answer(connection) for connection, _ in slow]
    finally:
        for connection, _ in slow:
            connection.close()
    for status, _, body in answers:  # cut off by the body timeout, as before
        assert status == 408 and "CASTREAM_BODY_TIMEOUT_S" in (body.get("detail") or body.get("error")), body
    assert served.batcher.reserved == 0


def test_a_full_queue_refuses_before_the_body_is_read_with_retry_after(serve) -> None:
    served = serve(**ONE_IMAGE, body_timeout_s=10, retry_after_s=2)
    session = served.slow_model(2.0)
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(send, served.url, "/classify")
        wait_until(lambda: session.batches or running.done(), "the first request never reached the model")
        assert session.batches, running.result().text
        queued = pool.submit(send, served.url, V2)
        wait_until(lambda: served.batcher.depth >= 1, "the second request was never queued")
        for path in ("/classify", V2):
            # Only part of the body is sent: the answer cannot wait for the rest (10 s away, by the body timeout).
            connection, _ = start_body(served.port, path)
            with connection:
                status, headers, body = answer(connection)
            assert (status, headers["retry-after"]) == (503, "2"), body
            assert body.get("code") == "queue_full" or "CASTREAM_MAX_QUEUE" in body["error"], body
        refused = send(served.url, "/classify")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
        assert refused.json()["code"] == "queue_full"
        assert running.result().status_code == 200 and queued.result().status_code == 200
    assert send(served.url, "/classify").status_code == 200


@pytest.mark.parametrize("path", ["/classify", V2])
def test_room_gone_while_the_body_arrived_is_refused_with_retry_after(serve, path: str) -> None:
    served = serve(**ONE_IMAGE, body_timeout_s=30, retry_after_s=3)
    session = served.slow_model(2.0)
    connection, rest = start_body(served.port, path)  # the queue is empty: let in to send its body
    with connection, ThreadPoolExecutor(2) as pool:
        wait_until(lambda: served.seen() >= 1, "the slow request never reached the app")
        running = pool.submit(send, served.url, "/classify")
        wait_until(lambda: session.batches or running.done(), "the first request never reached the model")
        assert session.batches, running.result().text
        queued = pool.submit(send, served.url, "/classify")
        wait_until(lambda: served.batcher.depth >= 1, "the second request was never queued")
        connection.sendall(rest)  # the body is in, and the queue is full now
        status, headers, body = answer(connection)
        assert (status, headers["retry-after"]) == (503, "3"), body
        assert running.result().status_code == 200 and queued.result().status_code == 200
    assert served.batcher.reserved == 0
    assert send(served.url, path).status_code == 200
