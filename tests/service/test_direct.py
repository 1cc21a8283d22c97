"""The direct path of ``POST /classify``: which requests it takes, and that its answers are the route's."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
from fastapi.testclient import TestClient

from service.direct import DirectClassify, parse_query
from service.schemas import AttentionMode, OverlayArea, OverlayFormat
from service.serving import INLINE_PIXELS, Serving
from tests.service.servicetools import solid_png


def direct_layer(client: TestClient) -> DirectClassify:
    """The app's DirectClassify, found by walking its middleware stack (built by the first request)."""
    client.get("/livez")
    layer: Any = client.app.middleware_stack  # type: ignore[attr-defined]
    while not isinstance(layer, DirectClassify):
        layer = layer.app
    return layer


def scope(query: bytes = b"", path: str = "/classify", method: str = "POST", **extra: Any) -> dict[str, Any]:
    return {"type": "http", "path": path, "method": method, "query_string": query, "headers": [], **extra}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"", {}),
        (b"top_k=3", {"top_k": 3}),
        (b"top_k=1000&attention=none", {"top_k": 1000, "attention": AttentionMode.none}),
        (b"class_maps=true&embedding=false", {"class_maps": True, "embedding": False}),
        (b"explain=a&explain=b%20c", {"explain": ["a", "b c"]}),
        (
            b"attention=overlay&overlay_on=image&overlay_size=448&overlay_format=jpeg",
            {
                "attention": AttentionMode.overlay,
                "overlay_on": OverlayArea.image,
                "overlay_size": 448,
                "overlay_format": OverlayFormat.jpeg,
            },
        ),
    ],
)
def test_plain_queries_are_parsed(query: bytes, expected: dict[str, Any]) -> None:
    assert parse_query(query) == expected


@pytest.mark.parametrize(
    "query",
    [
        b"top_k=0",
        b"top_k=1001",
        b"top_k=05",
        b"top_k=+5",
        b"top_k=%205",
        b"top_k=",
        b"top_k=2&top_k=3",  # repeated
        b"attention=Grid",
        b"class_maps=yes",  # FastAPI reads it as true; it is its to read
        b"overlay_size=15",
        b"overlay_format=gif",
        b"unknown=1",
    ],
)
def test_anything_else_is_left_to_the_route(query: bytes) -> None:
    assert parse_query(query) is None


def test_only_warm_authorised_classify_posts_go_direct(app_client: Callable[..., TestClient]) -> None:
    layer = direct_layer(app_client())
    assert layer.plain(scope(b"top_k=2")) == {"top_k": 2}
    assert layer.plain(scope(method="GET")) is None
    assert layer.plain(scope(path="/classify/")) is None
    assert layer.plain(scope(path="/v2/models/x/infer")) is None
    assert layer.plain(scope(root_path="/api")) is None
    assert layer.plain(scope(b"top_k=x")) is None

    guarded = direct_layer(app_client(api_key="s3cret"))
    assert guarded.plain(scope(headers=[(b"authorization", b"Bearer s3cret")])) == {}
    assert guarded.plain(scope(headers=[(b"authorization", b"bearer s3cret")])) == {}
    assert guarded.plain(scope(headers=[(b"authorization", b"Bearer wrong")])) is None
    assert guarded.plain(scope()) is None


def test_not_direct_before_the_model_is_warm(app_client: Callable[..., TestClient]) -> None:
    client = app_client()
    layer = direct_layer(client)
    with mock.patch.object(layer.lifecycle, "serving", None):
        assert layer.plain(scope()) is None
        response = client.post("/classify", files={"file": ("a.png", solid_png((200, 30, 30)), "image/png")})
    assert response.status_code == 503 and response.json()["code"] == "starting"


QUERIES = [
    "",
    "top_k=3",
    "attention=none",
    "attention=overlay",
    "attention=overlay&overlay_on=image&overlay_size=64&overlay_format=jpeg",
    "class_maps=true&explain=blue",
    "embedding=true&top_k=1",
]


@pytest.mark.parametrize("query", QUERIES)
def test_direct_answers_are_the_routes(app_client: Callable[..., TestClient], query: str) -> None:
    """The same request answered directly, and by FastAPI's route (an unknown parameter sends it there, and the
    route ignores it): the same status, type and body, answers and errors alike."""
    client = app_client()
    layer = direct_layer(client)
    image = solid_png((20, 20, 230), size=(90, 70))
    assert layer.plain(scope(query.encode())) is not None
    assert layer.plain(scope(f"{query}&via=route".encode())) is None
    direct = client.post(f"/classify?{query}", files={"file": ("a.png", image, "image/png")})
    routed = client.post(f"/classify?{query}&via=route", files={"file": ("a.png", image, "image/png")})
    assert direct.status_code == routed.status_code
    assert direct.headers["content-type"] == routed.headers["content-type"]
    # An error (the tiny model has no embedding) names its own request; all else is the same.
    assert {**direct.json(), "request_id": None} == {**routed.json(), "request_id": None}


def test_direct_errors_keep_their_shape_id_and_count(client: TestClient) -> None:
    def rejected(reason: str) -> float:
        text = client.get("/metrics").text
        line = next(
            (x for x in text.splitlines() if x.startswith(f'castream_rejections_total{{reason="{reason}"}}')), ""
        )
        return float(line.split()[-1]) if line else 0.0

    before = rejected("invalid_base64")
    response = client.post("/classify", json={"images": ["not base64!"]}, headers={"x-request-id": "abc-1"})
    assert response.status_code == 422
    assert response.json() == {
        "detail": "images[0] is not valid base64",
        "code": "invalid_base64",
        "request_id": "abc-1",
    }
    assert response.headers["x-request-id"] == "abc-1"
    assert rejected("invalid_base64") == before + 1

    corrupt = client.post("/classify", files={"file": ("a.jpg", b"\xff\xd8\xff\xe0garbage", "image/jpeg")})
    assert corrupt.status_code in (400, 415) and corrupt.json()["code"] in ("corrupt_image", "unsupported_image")

    # A value the direct path leaves alone gets FastAPI's validation error, as before.
    invalid = client.post("/classify?top_k=0", json={"images": ["x"]})
    assert invalid.status_code == 422 and invalid.json()["code"] == "invalid_request"


def test_direct_requests_are_counted_under_the_route(client: TestClient) -> None:
    def answered() -> float:
        text = client.get("/metrics").text
        line = next(
            x for x in text.splitlines() if x.startswith('castream_requests_total{route="/classify",status="200"}')
        )
        return float(line.split()[-1])

    client.post("/classify", files={"file": ("a.png", solid_png((200, 30, 30)), "image/png")})
    before = answered()
    for _ in range(3):
        assert (
            client.post(
                "/classify?top_k=1", json={"images": [base64.b64encode(solid_png((9, 9, 9))).decode()]}
            ).status_code
            == 200
        )
    assert answered() == before + 3


def test_api_key_holds_on_the_direct_path(app_client: Callable[..., TestClient]) -> None:
    client = app_client(api_key="s3cret")
    files = {"file": ("a.png", solid_png((200, 30, 30)), "image/png")}
    assert client.post("/classify", files=files, headers={"authorization": "Bearer s3cret"}).status_code == 200
    for headers in ({}, {"authorization": "Bearer nope"}):
        response = client.post("/classify", files=files, headers=headers)
        assert response.status_code == 401 and response.json()["code"] == "unauthorized"


def test_small_images_decode_on_the_event_loop_larger_ones_in_the_pool(client: TestClient) -> None:
    threads: list[str] = []
    original = Serving._prepare

    def recording(self: Serving, *args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return original(self, *args)

    side = int(INLINE_PIXELS**0.5)
    with mock.patch.object(Serving, "_prepare", recording):
        for size in ((side, side), (side + 1, side)):
            image = solid_png((30, 200, 30), size=size, fmt="JPEG")
            assert client.post("/classify", files={"file": ("a.jpg", image, "image/jpeg")}).status_code == 200
    assert not threads[0].startswith("castream-decode")
    assert threads[1].startswith("castream-decode")
