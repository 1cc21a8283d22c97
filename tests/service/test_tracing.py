"""OpenTelemetry: off by default; on, a span per request with decode/queue/run/encode and linked batch spans."""

from __future__ import annotations

import base64
import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service import tracing
from service.app import create_app
from tests.service.servicetools import COLOURS, make_settings, solid_png, wait_ready

RED = solid_png(COLOURS["red"])
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture
def traced(model_path, monkeypatch) -> Iterator[tuple[TestClient, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "from_environment", lambda: provider)
    with TestClient(create_app(make_settings(model_path))) as client:
        wait_ready(client)
        exporter.clear()
        yield client, exporter


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
    ],
)
def test_tracing_is_on_only_when_the_environment_asks(env: dict, on: bool) -> None:
    assert tracing.wanted(env) is on


def test_off_by_default_nothing_is_installed(client: TestClient) -> None:
    assert tracing._tracer is None
    assert client.post("/classify", files=[("file", RED)]).status_code == 200


def test_a_request_span_continues_traceparent_with_its_stages(traced) -> None:
    client, exporter = traced
    headers = {"traceparent": f"00-{TRACE}-{PARENT}-01"}
    response = client.post("/classify", files=[("file", RED), ("file", RED)], headers=headers)
    assert response.status_code == 200
    spans = exporter.get_finished_spans()
    root = next(s for s in spans if s.name == "POST /classify")
    assert format(root.context.trace_id, "032x") == TRACE and format(root.parent.span_id, "016x") == PARENT
    assert root.attributes["http.response.status_code"] == 200 and root.attributes["castream.images"] == 2
    assert root.attributes["castream.model"] == "tiny-ca"
    children = {s.name: s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id}
    assert set(children) == {"decode", "queue", "run", "encode"}
    assert children["decode"].start_time <= children["queue"].start_time <= children["encode"].start_time
    batches = [s for s in spans if s.name == "batch"]
    assert batches and all(s.parent is None for s in batches)
    assert all(link.context.span_id == root.context.span_id for s in batches for link in s.links)
    assert sum(s.attributes["castream.batch_size"] for s in batches) == 2


def test_one_batch_span_links_every_request_in_it(traced) -> None:
    client, exporter = traced
    tensor = {"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(RED).decode()]}
    barrier = threading.Barrier(4)

    def call() -> None:
        barrier.wait()
        assert client.post("/v2/models/tiny-ca/infer", json={"inputs": [tensor]}).status_code == 200

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    spans = exporter.get_finished_spans()
    requests = {s.context.span_id for s in spans if s.name == "POST /v2/models/{model_name}/infer"}
    linked = {link.context.span_id for s in spans if s.name == "batch" for link in s.links}
    assert len(requests) == 4 and linked == requests
    batches = [s for s in spans if s.name == "batch"]
    assert all(s.attributes["castream.batch_size"] == len(s.links) for s in batches)


def test_an_error_span_has_its_status(traced) -> None:
    client, exporter = traced
    assert client.post("/classify", files=[("file", b"junk")]).status_code == 415
    (root,) = [s for s in exporter.get_finished_spans() if s.name == "POST /classify"]
    assert root.attributes["http.response.status_code"] == 415


class _Receiver(BaseHTTPRequestHandler):
    received: list[ExportTraceServiceRequest] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        _Receiver.received.append(request)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_spans_reach_a_real_otlp_http_receiver(live_server) -> None:
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        server = live_server(
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.server_port}",
            OTEL_SERVICE_NAME="castream-test",
        )
        headers = {"traceparent": f"00-{TRACE}-{PARENT}-01"}
        assert httpx.post(f"{server.url}/classify", files=[("file", RED)], headers=headers).status_code == 200
        server.stop()  # the shutdown flushes the batch processor
    finally:
        receiver.shutdown()
    spans, services = [], set()
    for request in _Receiver.received:
        for resource_spans in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            services.add(attrs.get("service.name"))
            spans += [s for scope in resource_spans.scope_spans for s in scope.spans]
    assert services == {"castream-test"}
    root = next(s for s in spans if s.name == "POST /classify")
    assert root.trace_id.hex() == TRACE and root.parent_span_id.hex() == PARENT
    children = {s.name for s in spans if s.parent_span_id == root.span_id}
    assert children == {"decode", "queue", "run", "encode"}
    (batch,) = [s for s in spans if s.name == "batch"]
    assert [link.span_id for link in batch.links] == [root.span_id]
