"""The Open Inference Protocol (KServe v2): tritonclient against a running service, and the protocol's edges."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

from service import oip
from tests.service.servicetools import CLASSES, COLOURS, run_directly, solid_png, tiny_inputs

MODEL = "tiny-ca"


@pytest.fixture
def server(live_server):
    return live_server()


@pytest.fixture
def client(server) -> triton.InferenceServerClient:
    connection = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield connection
    connection.close()


def test_tritonclient_reads_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert not client.is_model_ready("other")
    server = client.get_server_metadata()
    assert server["name"] == "castream" and "classification" in server["extensions"]
    metadata = client.get_model_metadata(MODEL)
    assert metadata["name"] == MODEL and metadata["versions"] == ["0.1.0"]
    assert metadata["inputs"] == [
        {"name": "image", "datatype": "FP32", "shape": [-1, 3, 32, 32]},
        {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]},
    ]
    assert [(o["name"], o["shape"]) for o in metadata["outputs"]] == [
        ("logits", [-1, 4]),
        ("attention", [-1, 4, 4]),
        ("class_maps", [-1, 4, 4, 4]),
    ]
    with pytest.raises(InferenceServerException, match="unknown model 'other'"):
        client.get_model_metadata("other")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infers_from_a_preprocessed_tensor(
    client: triton.InferenceServerClient, model_path: Path, binary: bool
) -> None:
    batch = tiny_inputs(solid_png(COLOURS["red"]), solid_png(COLOURS["blue"], size=(30, 70)))
    tensor = triton.InferInput("image", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("logits", "class_maps")]
    result = client.infer(MODEL, [tensor], outputs=outputs, request_id="req-7")
    expected = run_directly(model_path, batch)
    assert result.get_response()["id"] == "req-7"
    assert [o["name"] for o in result.get_response()["outputs"]] == ["logits", "class_maps"]  # as asked
    np.testing.assert_allclose(result.as_numpy("logits"), expected["logits"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("class_maps"), expected["class_maps"], rtol=0, atol=1e-6)
    assert result.as_numpy("attention") is None


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json-base64"])
def test_tritonclient_infers_from_encoded_images_with_classification(
    client: triton.InferenceServerClient, model_path: Path, binary: bool
) -> None:
    files = [solid_png(COLOURS["green"]), solid_png(COLOURS["dark"], fmt="JPEG")]
    values = files if binary else [base64.b64encode(data).decode() for data in files]
    tensor = triton.InferInput("image_bytes", [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array(values, dtype=object), binary_data=binary)
    outputs = [
        triton.InferRequestedOutput("logits", binary_data=binary, class_count=2),
        triton.InferRequestedOutput("attention", binary_data=binary),
    ]
    result = client.infer(MODEL, [tensor], outputs=outputs)
    expected = run_directly(model_path, tiny_inputs(*files))
    # Binary BYTES come back as bytes, JSON ones as str.
    labels = np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else v, otypes=[object])(
        result.as_numpy("logits")
    )
    assert labels.shape == (2, 2)
    for row, logits in zip(labels, expected["logits"], strict=True):
        value, index, label = row[0].split(":")
        assert int(index) == int(np.argmax(logits)) and label == CLASSES[int(index)]
        assert float(value) == pytest.approx(float(logits.max()), abs=1e-5)
    assert [row[0].split(":")[2] for row in labels] == ["green", "dark"]
    np.testing.assert_allclose(result.as_numpy("attention"), expected["attention"], rtol=0, atol=1e-6)


def test_v2_and_classify_agree_on_the_same_image(client: triton.InferenceServerClient, server) -> None:
    import httpx

    image = solid_png(COLOURS["blue"], size=(50, 40))
    tensor = triton.InferInput("image_bytes", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([image], dtype=object))
    result = client.infer(MODEL, [tensor])  # no outputs list: every output
    native = httpx.post(f"{server.url}/classify", params={"top_k": 4, "class_maps": "true"}, files={"file": image})
    prediction = native.json()["predictions"][0]
    logits = result.as_numpy("logits")[0]
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    for entry in prediction["top_k"]:
        assert entry["score"] == pytest.approx(float(probabilities[entry["index"]]), abs=1e-6)
        np.testing.assert_allclose(entry["map"]["values"], result.as_numpy("class_maps")[0, entry["index"]], atol=1e-6)
    np.testing.assert_allclose(prediction["attention"]["values"], result.as_numpy("attention")[0], atol=1e-6)


def test_v2_infer_needs_the_same_bearer_token(live_server) -> None:
    server = live_server(CASTREAM_API_KEY="open-sesame")
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    tensor = triton.InferInput("image_bytes", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([solid_png(COLOURS["red"])], dtype=object))
    try:
        assert client.is_server_ready()  # health stays open, as /readyz
        with pytest.raises(InferenceServerException, match="bearer token is missing") as refused:
            client.infer(MODEL, [tensor])
        assert refused.value.status() == "401"
        result = client.infer(MODEL, [tensor], headers={"Authorization": "Bearer open-sesame"})
        assert result.as_numpy("logits").shape == (1, 4)
    finally:
        client.close()


def _infer(client: TestClient, body: object, model: str = MODEL, **kwargs: object):
    return client.post(f"/v2/models/{model}/infer", json=body, **kwargs)


def _bytes_input(*files: bytes) -> dict:
    data = [base64.b64encode(f).decode() for f in files]
    return {"name": "image_bytes", "datatype": "BYTES", "shape": [len(files)], "data": data}


def test_binary_request_body_as_the_extension_lays_it_out(app_client) -> None:
    client = app_client()
    image = solid_png(COLOURS["red"])
    header = b'{"inputs":[{"name":"image_bytes","datatype":"BYTES","shape":[1],"parameters":{"binary_data_size":%d}}],'
    header %= len(image) + 4
    header += b'"outputs":[{"name":"logits","parameters":{"binary_data":true}}]}'
    response = client.post(
        f"/v2/models/{MODEL}/infer",
        content=header + struct.pack("<I", len(image)) + image,
        headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 200
    split = int(response.headers["Inference-Header-Content-Length"])
    meta = json.loads(response.content[:split])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 16
    logits = np.frombuffer(response.content[split:], "<f4")
    assert int(np.argmax(logits)) == CLASSES.index("red")


def _binary_body(tensors: list[tuple[str, str, list[int], bytes]]) -> tuple[bytes, int]:
    """A body of the binary extension: the JSON header for ``(name, datatype, shape, raw)`` inputs, then the raws."""
    inputs = [{"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(raw)}}
              for name, datatype, shape, raw in tensors]  # fmt: skip
    header = json.dumps({"inputs": inputs}).encode()
    return header + b"".join(raw for *_, raw in tensors), len(header)


def _length_prefixed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def test_binary_bytes_elements_are_views_into_the_body() -> None:
    jpeg, png = solid_png(COLOURS["red"], fmt="JPEG"), solid_png(COLOURS["blue"])
    body, split = _binary_body([("image_bytes", "BYTES", [2], _length_prefixed(jpeg, png))])
    (tensor,) = oip.parse_request(body, str(split)).inputs
    assert [bytes(value) for value in tensor.values] == [jpeg, png]
    # A photo of megabytes is not copied out of the request: each element reads the body in place.
    assert all(isinstance(value, memoryview) and value.obj is body for value in tensor.values)


def test_binary_fp32_input_is_its_own_aligned_array() -> None:
    values = np.arange(2 * 3 * 4 * 4, dtype="<f4").reshape(2, 3, 4, 4)
    body, split = _binary_body([("image", "FP32", [2, 3, 4, 4], values.tobytes())])
    body = b" " + body  # the header one byte longer: the data starts at an odd offset of the body
    (tensor,) = oip.parse_request(body, str(split + 1)).inputs
    np.testing.assert_array_equal(tensor.values, values)
    assert tensor.values.flags.aligned and tensor.values.flags.writeable and tensor.values.base is not body


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_length_prefixed(b"abc")[:3], "ends inside an element's 4-byte length"),
        (struct.pack("<I", 9) + b"abc", "claims 9 bytes but only 3 remain"),
    ],
)
def test_broken_binary_bytes_are_protocol_errors(raw: bytes, message: str) -> None:
    whole, split = _binary_body([("image_bytes", "BYTES", [1], raw)])
    with pytest.raises(oip.ProtocolError, match=message):
        oip.parse_request(whole, str(split))


def test_two_photos_in_one_binary_request_answer_as_json_ones_do(app_client) -> None:
    client = app_client()
    files = [solid_png(COLOURS["red"], size=(640, 480), fmt="JPEG"), solid_png(COLOURS["blue"])]
    body, split = _binary_body([("image_bytes", "BYTES", [2], _length_prefixed(*files))])
    binary = client.post(
        f"/v2/models/{MODEL}/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(split), "Content-Type": "application/octet-stream"},
    )
    as_json = _infer(client, {"inputs": [_bytes_input(*files)]})
    assert binary.status_code == as_json.status_code == 200
    logits = {o["name"]: o["data"] for o in binary.json()["outputs"]}["logits"]
    assert logits == {o["name"]: o["data"] for o in as_json.json()["outputs"]}["logits"]
    top = np.asarray(logits).reshape(2, -1).argmax(axis=1)
    assert [CLASSES[i] for i in top] == ["red", "blue"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"inputs": []}, 400, "non-empty 'inputs'"),
        ({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.0] * 5}]}, 400, "needs"),
        ({"inputs": [{"name": "image", "datatype": "INT8", "shape": [1], "data": [1]}]}, 400, "datatype 'INT8'"),
        ({"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}, 400, "base64"),
        ({"inputs": [_bytes_input(b"not an image")]}, 415, "not a JPEG"),
        ({"inputs": [_bytes_input(solid_png((1, 2, 3)))], "outputs": [{"name": "scores"}]}, 400, "unknown output"),
        ({"inputs": [_bytes_input(*[solid_png((1, 2, 3))] * 17)]}, 413, "over the limit of 16"),
    ],
)
def test_protocol_errors_are_error_objects(app_client, body: dict, status: int, message: str) -> None:
    response = _infer(app_client(), body)
    assert response.status_code == status
    assert set(response.json()) == {"error", "request_id"} and message in response.json()["error"]


def test_not_json_and_unknown_models_are_error_objects(client_v2: TestClient) -> None:
    broken = client_v2.post(f"/v2/models/{MODEL}/infer", content=b"{", headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]
    unknown = _infer(client_v2, {"inputs": [_bytes_input(solid_png((1, 2, 3)))]}, model="resnet")
    assert unknown.status_code == 404 and unknown.json() == {
        "error": f"unknown model 'resnet'; this server serves '{MODEL}'",
        "request_id": unknown.headers["x-request-id"],
    }
    nothing = client_v2.get("/v2/nothing")
    assert nothing.json() == {"error": "Not Found", "request_id": nothing.headers["x-request-id"]}


@pytest.fixture
def client_v2(app_client) -> TestClient:
    return app_client()


def test_a_gap_model_lists_no_class_maps_and_refuses_them(app_client, gap_model_path: Path) -> None:
    client = app_client(gap_model_path)
    outputs = [o["name"] for o in client.get("/v2/models/tiny-gap").json()["outputs"]]
    assert outputs == ["logits"]
    body = {"inputs": [_bytes_input(solid_png((1, 2, 3)))], "outputs": [{"name": "class_maps"}]}
    response = _infer(client, body, model="tiny-gap")
    assert response.status_code == 400 and "has no class maps" in response.json()["error"]


def test_v2_requests_share_the_batcher_and_metrics(client_v2: TestClient) -> None:
    body = {"id": "x", "inputs": [_bytes_input(solid_png(COLOURS["red"]), solid_png(COLOURS["green"]))]}
    assert _infer(client_v2, body).json()["id"] == "x"
    text = client_v2.get("/metrics").text
    assert "castream_images_classified_total 2.0" in text
    assert 'castream_requests_total{route="/v2/models/{model_name}/infer",status="200"} 1.0' in text


def test_readiness_is_false_while_draining(client_v2: TestClient) -> None:
    assert client_v2.get("/v2/health/ready").status_code == 200
    client_v2.app.state.lifecycle.drain()
    assert client_v2.get("/v2/health/ready").json()["error"] == "not ready: draining"
    assert client_v2.get(f"/v2/models/{MODEL}/ready").status_code == 400
    assert client_v2.get("/v2/health/live").status_code == 200


def test_v2_bodies_share_the_byte_limit(app_client) -> None:
    client = app_client(max_request_bytes=1024)
    response = _infer(client, {"inputs": [_bytes_input(b"x" * 2000)]})
    assert response.status_code == 413
    assert "CASTREAM_MAX_REQUEST_BYTES" in response.json()["error"] and set(response.json()) == {"error", "request_id"}
