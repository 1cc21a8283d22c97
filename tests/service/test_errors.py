"""Every bad-input and refusal path answers a JSON error with the right status, never a 500."""

from __future__ import annotations

import asyncio
import base64
import struct
import zlib

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from service.errors import ServiceError
from service.inputs import read_body
from tests.service.servicetools import COLOURS, solid_png

RED = solid_png(COLOURS["red"])


def png_header(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height``: a decompression bomb's calling card."""
    data = bytearray(solid_png((0, 0, 0), size=(1, 1)))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def post_file(client: TestClient, data: bytes, name: str = "x.png", **kwargs: object):
    return client.post("/classify", files=[("file", (name, data, "application/octet-stream"))], **kwargs)


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code and body["detail"]
    return body


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"", 400, "empty_image"),
        (b"this is not an image at all", 415, "unsupported_image"),
        (RED[: len(RED) // 2], 400, "corrupt_image"),
        (solid_png((9, 9, 9), fmt="JPEG")[:200], 400, "corrupt_image"),
        (solid_png((9, 9, 9), fmt="TIFF"), 415, "unsupported_image"),
        (png_header(30_000, 30_000), 413, "too_many_pixels"),
        (png_header(7_000, 7_000), 413, "too_many_pixels"),
    ],
    ids=["empty", "text", "truncated-png", "truncated-jpeg", "tiff", "bomb-huge", "bomb-over-limit"],
)
def test_bad_images(client: TestClient, data: bytes, status: int, code: str) -> None:
    assert_error(post_file(client, data), status, code)


def test_one_bad_image_fails_only_its_own_request(client: TestClient) -> None:
    assert_error(client.post("/classify", files=[("file", RED), ("file", b"junk")]), 415, "unsupported_image")
    assert post_file(client, RED).status_code == 200


def test_pixel_limit_is_a_setting(app_client) -> None:
    client = app_client(max_image_pixels=40 * 40)
    assert post_file(client, solid_png((1, 2, 3), size=(40, 40))).status_code == 200
    body = assert_error(post_file(client, solid_png((1, 2, 3), size=(41, 40))), 413, "too_many_pixels")
    assert "CASTREAM_MAX_IMAGE_PIXELS" in body["detail"]


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"content": b"abc", "headers": {"content-type": "text/plain"}}, 415, "unsupported_content_type"),
        ({"content": RED}, 415, "unsupported_content_type"),
        ({"content": b"", "headers": {"content-type": "application/json"}}, 400, "empty_body"),
        ({"content": b"", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 400, "empty_body"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
        ({"json": {"pictures": []}}, 422, "invalid_request"),
        ({"json": {"images": []}}, 422, "invalid_request"),
        ({"json": {"images": [7]}}, 422, "invalid_request"),
        ({"json": ["a"]}, 422, "invalid_request"),
        ({"json": {"images": ["@@not base64@@"]}}, 422, "invalid_base64"),
        ({"json": {"images": [""]}}, 422, "invalid_request"),
        ({"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data"}}, 400, "invalid_multipart"),
        ({"data": {"other": "field"}, "files": [("upload", RED)]}, 422, "no_images"),
        ({"data": {"file": "text, not a file"}, "files": [("other", RED)]}, 422, "not_a_file"),
        ({"files": [("file", RED)], "params": {"top_k": 0}}, 422, "invalid_request"),
        ({"files": [("file", RED)], "params": {"attention": "heatmap"}}, 422, "invalid_request"),
    ],
    ids=[
        "text-plain",
        "no-content-type",
        "empty-json",
        "empty-multipart",
        "invalid-json",
        "json-missing-images",
        "json-empty-list",
        "json-not-strings",
        "json-not-object",
        "bad-base64",
        "empty-base64",
        "multipart-no-boundary",
        "multipart-no-file-field",
        "multipart-file-as-text",
        "top-k-zero",
        "unknown-attention-mode",
    ],
)
def test_bad_requests(client: TestClient, kwargs: dict, status: int, code: str) -> None:
    assert_error(client.post("/classify", **kwargs), status, code)


def test_too_many_images(app_client) -> None:
    client = app_client(max_images_per_request=2, max_queue=4)
    assert client.post("/classify", files=[("file", RED)] * 2).status_code == 200
    body = assert_error(client.post("/classify", files=[("file", RED)] * 3), 413, "too_many_images")
    assert "CASTREAM_MAX_IMAGES_PER_REQUEST" in body["detail"]
    assert_error(
        client.post("/classify", json={"images": [base64.b64encode(RED).decode()] * 3}), 413, "too_many_images"
    )


def test_too_many_bytes_declared_or_streamed(app_client) -> None:
    client = app_client(max_request_bytes=4096)
    big = solid_png((1, 2, 3), size=(300, 300), fmt="BMP")
    assert len(big) > 4096
    assert_error(post_file(client, big), 413, "too_large")

    def chunks():  # no Content-Length: the limit applies while reading
        for start in range(0, len(big), 1000):
            yield big[start : start + 1000]

    response = client.post("/classify", content=chunks(), headers={"content-type": "application/json"})
    assert_error(response, 413, "too_large")
    assert post_file(client, RED).status_code == 200


def test_api_key_guards_classify_only(app_client) -> None:
    client = app_client(api_key="s3cret")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}):
        response = post_file(client, RED, headers=headers)
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
    assert post_file(client, RED, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/readyz").status_code == 200 and client.get("/v1/model").json()["auth_required"] is True
    assert 'castream_rejections_total{reason="unauthorized"} 3.0' in client.get("/metrics").text


def test_a_client_that_disconnects_mid_body_gets_a_400_not_a_crash() -> None:
    messages = [{"type": "http.request", "body": b"x" * 100, "more_body": True}, {"type": "http.disconnect"}]

    async def receive() -> dict:
        return messages.pop(0)

    request = Request({"type": "http", "method": "POST", "headers": [], "path": "/classify"}, receive)
    with pytest.raises(ServiceError) as error:
        asyncio.run(read_body(request, 10_000))
    assert (error.value.status, error.value.code) == (400, "incomplete_body") and "100 bytes" in error.value.detail


def test_before_the_model_is_loaded_every_route_says_when_to_retry_as_configured(model_path) -> None:
    from service.app import create_app
    from tests.service.servicetools import make_settings

    client = TestClient(create_app(make_settings(model_path, retry_after_s=9)))  # no lifespan: nothing loaded
    for response in (client.get("/v1/model"), client.get("/v2/models/any"), client.post("/classify", json={})):
        assert response.status_code == 503 and response.headers["retry-after"] == "9", response.text
