"""One request pipeline for both protocols: each request is admitted once, for all of its images, and a refusal
says what to do; the /v2 probes answer with KServe's JSON bodies."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.batcher import Batcher
from service.contract import OUTPUT_NAMES
from tests.service.servicetools import COLOURS, solid_png

MODEL = "tiny-ca"
INFER = f"/v2/models/{MODEL}/infer"
RED = solid_png(COLOURS["red"])


def _batcher(client: TestClient) -> Batcher:
    return client.app.state.lifecycle.serving.batcher


def _record_admissions(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    batcher, admitted = _batcher(client), []
    admit = batcher.admit

    def recording(images: int = 1):
        admitted.append(images)
        return admit(images)

    monkeypatch.setattr(batcher, "admit", recording)
    return admitted


def _tensor(count: int) -> dict:
    data = np.zeros((count, 3, 32, 32), np.float32).ravel().tolist()
    return {"inputs": [{"name": "image", "datatype": "FP32", "shape": [count, 3, 32, 32], "data": data}]}


def _files(count: int) -> dict:
    data = [base64.b64encode(RED).decode()] * count
    return {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [count], "data": data}]}


def test_every_request_is_admitted_once_for_all_of_its_images(app_client, monkeypatch: pytest.MonkeyPatch) -> None:
    client = app_client()
    admitted = _record_admissions(client, monkeypatch)
    assert client.post(INFER, json=_tensor(3)).status_code == 200
    assert client.post(INFER, json=_files(2)).status_code == 200
    assert client.post("/classify", files=[("file", RED), ("file", RED)]).status_code == 200
    assert client.post("/classify", json={"images": [base64.b64encode(RED).decode()] * 4}).status_code == 200
    assert admitted == [3, 2, 2, 4]
    # Refused before admission: the body said what was wrong without holding any room.
    assert client.post(INFER, json=_files(17)).status_code == 413
    assert client.post(INFER, json={"inputs": []}).status_code == 400
    assert admitted == [3, 2, 2, 4] and _batcher(client).reserved == 0


def test_a_request_whose_images_do_not_fit_is_refused_whole_and_says_what_to_do(app_client) -> None:
    client = app_client(max_queue=16, retry_after_s=2)
    batcher = _batcher(client)
    held = batcher.admit(15)  # other requests' images, still being decoded
    try:
        for response in (client.post(INFER, json=_tensor(2)), client.post(INFER, json=_files(2))):
            assert response.status_code == 503 and response.headers["retry-after"] == "2"
            assert response.json()["error"] == (
                "the queue has room for 1 of this request's 2 images (CASTREAM_MAX_QUEUE=16); retry in 2 s, "
                "or send fewer images at once"
            )
        refused = client.post("/classify", files=[("file", RED), ("file", RED)])
        assert refused.status_code == 503 and refused.json()["code"] == "queue_full"
        assert client.post(INFER, json=_tensor(1)).status_code == 200  # one image still fits
    finally:
        held.release()
    assert batcher.reserved == 0
    assert client.post(INFER, json=_tensor(2)).status_code == 200


def test_a_full_queue_names_this_workers_share_of_the_setting(app_client) -> None:
    # The settings of one worker of two (service.supervisor gives each its share of the queue, here 16 images).
    client = app_client(max_queue=16, workers=2, max_images_per_request=8)
    batcher = _batcher(client)
    with batcher.admit(16):
        response = client.post("/classify", files=[("file", RED)])
    assert response.status_code == 503 and response.json()["detail"] == (
        "the queue is full (16 images waiting; this process takes 16, its share of CASTREAM_MAX_QUEUE with "
        "CASTREAM_WORKERS=2); retry in 1 s"
    )


def test_the_probes_answer_with_kserves_bodies_and_their_status_codes(app_client) -> None:
    client = app_client()
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get(f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}
    assert client.get(f"/v2/models/{MODEL}/versions/0.1.0/ready").json() == {"name": MODEL, "ready": True}
    assert client.get("/v2/models/other/ready").status_code == 404
    client.app.state.lifecycle.drain()
    not_ready = client.get(f"/v2/models/{MODEL}/ready")
    assert not_ready.status_code == 400 and not_ready.json()["error"] == "not ready: draining"
    assert client.get("/v2/health/live").json() == {"live": True}


def test_the_openapi_schema_documents_the_probes_and_infer(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    paths, components = schema["paths"], schema["components"]["schemas"]
    for path, model in (
        ("/v2/health/live", "ServerLive"),
        ("/v2/health/ready", "ServerReady"),
        ("/v2/models/{model_name}/ready", "ModelReady"),
    ):
        ok = paths[path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": f"#/components/schemas/{model}"}, path
        assert paths[path]["get"]["responses"]["400"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ProtocolErrorBody"
        }
    assert components["ServerLive"]["required"] == ["live"] and components["ServerReady"]["required"] == ["ready"]
    infer = paths["/v2/models/{model_name}/infer"]["post"]
    body = infer["requestBody"]["content"]["application/json"]
    assert body["example"]["inputs"][0]["name"] == "image_bytes"
    outputs = body["schema"]["properties"]["outputs"]["items"]["properties"]["name"]["enum"]
    assert outputs == list(OUTPUT_NAMES)  # the contract's table of outputs
    assert set(infer["responses"]) >= {"200", "400", "413", "503", "504"}
