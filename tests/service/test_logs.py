"""CASTREAM_LOG_FORMAT=json: the real service writes one JSON object per line, and one access line per request."""

from __future__ import annotations

import base64
import json

import httpx

from tests.service.servicetools import COLOURS, solid_png

RED = solid_png(COLOURS["red"])
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _records(output: str) -> list[dict]:
    lines = [line for line in output.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line, not just some, must be JSON


def test_json_logs_one_object_per_line_and_an_access_line_per_request(live_server) -> None:
    server = live_server(CASTREAM_LOG_FORMAT="json")
    url = server.url
    ok = httpx.post(
        f"{url}/classify",
        files=[("file", RED), ("file", RED)],
        params={"attention": "overlay"},
        headers={"x-request-id": "img-1", "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"},
    )
    bad = httpx.post(f"{url}/classify", files=[("file", b"junk")], headers={"x-request-id": "bad-1"})
    tensor = {"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(RED).decode()]}
    v2 = httpx.post(f"{url}/v2/models/tiny-ca/infer", json={"inputs": [tensor]}, headers={"x-request-id": "v2-1"})
    for path in ("/healthz", "/readyz", "/metrics", "/v2/health/ready"):
        assert httpx.get(url + path).status_code == 200
    assert (ok.status_code, bad.status_code, v2.status_code) == (200, 415, 200)
    records = _records(server.stop())

    assert all({"time", "level", "logger", "message", "request_id"} <= set(r) for r in records)
    assert any(r["logger"].startswith("uvicorn") for r in records)  # the server's own lines are JSON too
    access = {r["request_id"]: r for r in records if r["logger"] == "service.access"}
    assert set(access) == {"img-1", "bad-1", "v2-1"}  # probes and metrics are left out

    line = access["img-1"]
    assert line["trace_id"] == TRACE and line["method"] == "POST" and line["route"] == "/classify"
    assert line["status"] == 200 and line["images"] == 2
    assert line["bytes_in"] == int(ok.request.headers["content-length"]) and line["bytes_out"] == len(ok.content)
    stages = ("decode_ms", "queue_ms", "run_ms", "encode_ms")
    assert all(line[s] >= 0 for s in stages) and line["total_ms"] >= sum(line[s] for s in stages)

    assert access["bad-1"]["status"] == 415 and access["bad-1"]["images"] == 0 and access["bad-1"]["trace_id"] is None
    assert access["v2-1"]["route"] == "/v2/models/{model_name}/infer" and access["v2-1"]["images"] == 1
    assert {"decode_ms", "queue_ms", "run_ms", "encode_ms"} <= set(access["v2-1"])


def test_text_stays_the_default_without_access_lines(live_server) -> None:
    server = live_server()
    assert httpx.post(f"{server.url}/classify", files=[("file", RED)]).status_code == 200
    output = server.stop()
    assert "Application startup complete" in output and not output.lstrip().startswith("{")
    assert "service.access" not in output
