"""Request ids: accepted or made, echoed on every response, in every error body, the OIP id and the log."""

from __future__ import annotations

import base64
import logging
import re
import uuid

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.requestid import HEADER, MAX_LENGTH, RequestIdFilter, new_request_id
from tests.service.servicetools import COLOURS, make_settings, solid_png

RED = solid_png(COLOURS["red"])
GENERATED = re.compile(r"[0-9a-f]{32}")


def test_a_request_without_an_id_gets_a_new_one_on_every_response(client: TestClient) -> None:
    ids = [client.get("/healthz").headers[HEADER] for _ in range(3)]
    assert all(GENERATED.fullmatch(i) for i in ids) and len(set(ids)) == 3


def test_made_ids_are_distinct_version_4_uuids() -> None:
    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for made in ids:
        assert GENERATED.fullmatch(made)
        parsed = uuid.UUID(hex=made)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


@pytest.mark.parametrize("given", ["abc-123", "x" * MAX_LENGTH, "req:7/2026~!"])
def test_an_acceptable_client_id_is_echoed(client: TestClient, given: str) -> None:
    response = client.post("/classify", files=[("file", RED)], headers={HEADER: given})
    assert response.status_code == 200 and response.headers[HEADER] == given


@pytest.mark.parametrize("given", ["x" * (MAX_LENGTH + 1), "has space", "tab\there", ""])
def test_an_unacceptable_client_id_is_replaced(client: TestClient, given: str) -> None:
    response = client.get("/healthz", headers={HEADER: given})
    assert GENERATED.fullmatch(response.headers[HEADER]), response.headers[HEADER]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "/nowhere", {}, 404),
        ("DELETE", "/classify", {}, 405),
        ("POST", "/classify", {"files": [("file", b"not an image")]}, 415),
        ("POST", "/classify", {"files": [("file", RED)], "params": {"top_k": "0"}}, 422),
        ("POST", "/classify", {"files": [("file", b"")]}, 400),
    ],
    ids=["404", "405", "415", "422", "400"],
)
def test_native_error_bodies_carry_the_id_of_their_header(
    client: TestClient, method: str, path: str, kwargs: dict, status: int
) -> None:
    headers = {**kwargs.pop("headers", {}), HEADER: "trace-me"}
    response = client.request(method, path, headers=headers, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] and body["request_id"] == "trace-me" == response.headers[HEADER]


def test_v2_error_bodies_carry_the_id(client: TestClient) -> None:
    for response in (
        client.get("/v2/nothing"),
        client.post("/v2/models/tiny-ca/infer", content=b"{", headers={"Content-Type": "application/json"}),
        client.post("/v2/models/resnet/infer", json={"inputs": []}),
    ):
        assert response.status_code >= 400
        assert set(response.json()) == {"error", "request_id"}
        assert response.json()["request_id"] == response.headers[HEADER]


def _bytes_infer(client: TestClient, **body: object):
    tensor = {"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(RED).decode()]}
    return client.post("/v2/models/tiny-ca/infer", json={"inputs": [tensor], **body}, headers={HEADER: "oip-1"})


def test_the_oip_id_is_the_request_id_unless_the_client_gave_one(client: TestClient) -> None:
    without = _bytes_infer(client)
    assert without.status_code == 200 and without.json()["id"] == "oip-1" == without.headers[HEADER]
    given = _bytes_infer(client, id="mine")
    assert given.json()["id"] == "mine" and given.headers[HEADER] == "oip-1"


def test_503_before_ready_carries_the_id(model_path) -> None:
    client = TestClient(create_app(make_settings(model_path)))  # no lifespan: nothing loaded
    for response in (
        client.get("/v1/model"),
        client.get("/v2/models/any"),
        client.post("/classify", json={}),
        client.get("/readyz"),
    ):
        assert response.status_code == 503
        assert response.json()["request_id"] == response.headers[HEADER]


def test_an_unexpected_error_answers_500_with_the_id_and_logs_it(model_path) -> None:
    app = create_app(make_settings(model_path))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaboom")

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("service.errors")
    logger.addHandler(handler)
    try:
        response = TestClient(app, raise_server_exceptions=False).get("/boom", headers={HEADER: "crash-42"})
    finally:
        logger.removeHandler(handler)
    assert response.status_code == 500 and response.headers[HEADER] == "crash-42"
    assert response.json() == {"detail": response.json()["detail"], "code": "internal_error", "request_id": "crash-42"}
    assert [r.request_id for r in records] == ["crash-42"]


def test_the_openapi_schema_documents_the_header_on_every_response(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    responses = [r for ops in schema["paths"].values() for op in ops.values() for r in op["responses"].values()]
    assert responses and all(HEADER in r["headers"] for r in responses)
    assert "request_id" in schema["components"]["schemas"]["ErrorBody"]["required"]
