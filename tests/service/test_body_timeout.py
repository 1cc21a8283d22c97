"""A client trickling its body is cut off with 408 after CASTREAM_BODY_TIMEOUT_S, while others are served."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from tests.service.servicetools import COLOURS, solid_png

RED = solid_png(COLOURS["red"])


@pytest.mark.parametrize("path", ["/classify", "/v2/models/tiny-ca/infer"])
def test_a_trickled_body_is_cut_off_with_408(live_server, path: str) -> None:
    server = live_server(CASTREAM_BODY_TIMEOUT_S="0.5")
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as slow:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        slow.sendall(head.encode() + b'{"ima')  # and nothing more
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = slow.recv(4096)
            if not chunk:
                break
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"408", answer
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert "CASTREAM_BODY_TIMEOUT_S" in (body.get("detail") or body.get("error")) and body["request_id"]
    assert httpx.post(f"{server.url}/classify", files=[("file", RED)]).status_code == 200
