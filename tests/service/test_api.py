"""Every endpoint through the real app: answers, shapes and the JSON error contract."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.service.servicetools import CLASSES, COLOURS, solid_png


def classify(client: TestClient, *images: bytes, **params: object):
    files = [("file", (f"img{i}.png", data, "image/png")) for i, data in enumerate(images)]
    return client.post("/classify", files=files, params=params)


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "alive"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_model_description_comes_from_the_file(client: TestClient) -> None:
    info = client.get("/v1/model").json()
    assert info["name"] == "tiny-ca" and info["pooling"] == "ca" and info["classes"] == CLASSES
    assert info["input"] == {"name": "image", "shape": [None, 3, 32, 32], "dtype": "float32"}
    assert info["attention"] == {"height": 4, "width": 4}
    assert info["providers"] == ["CPUExecutionProvider"]
    assert info["preprocessing"]["resize"] == 36 and info["auth_required"] is False


@pytest.mark.parametrize("name", list(COLOURS))
def test_multipart_image_gets_its_label(client: TestClient, name: str) -> None:
    response = classify(client, solid_png(COLOURS[name]))
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == {"name": "tiny-ca", "version": "0.1.0"}
    (prediction,) = body["predictions"]
    assert prediction["top_k"][0]["label"] == name
    assert prediction["top_k"][0]["index"] == CLASSES.index(name)
    scores = [entry["score"] for entry in prediction["top_k"]]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1


def test_several_images_keep_their_order_in_json_and_multipart(client: TestClient) -> None:
    names = ["blue", "red", "dark", "green"]
    images = [solid_png(COLOURS[n]) for n in names]
    by_form = classify(client, *images).json()["predictions"]
    by_json = client.post("/classify", json={"images": [base64.b64encode(i).decode() for i in images]}).json()
    assert [p["top_k"][0]["label"] for p in by_form] == names
    assert by_json["predictions"] == by_form


def test_json_accepts_data_urls_and_wrapped_base64(client: TestClient) -> None:
    text = base64.encodebytes(solid_png(COLOURS["green"])).decode()  # 76-column lines
    response = client.post("/classify", json={"images": [f"data:image/png;base64,{text}"]})
    assert response.status_code == 200
    assert response.json()["predictions"][0]["top_k"][0]["label"] == "green"


def test_top_k_is_capped_by_the_class_count(client: TestClient) -> None:
    image = solid_png(COLOURS["red"])
    assert len(classify(client, image, top_k=2).json()["predictions"][0]["top_k"]) == 2
    full = classify(client, image, top_k=50).json()["predictions"][0]["top_k"]
    assert sorted(e["label"] for e in full) == sorted(CLASSES)
    assert sum(e["score"] for e in full) == pytest.approx(1.0, abs=1e-6)


def test_attention_grid_sums_to_one_and_points_at_the_bright_corner(client: TestClient) -> None:
    image = Image.new("RGB", (64, 64), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 24, 24))  # top-left corner of the centre crop
    out = io.BytesIO()
    image.save(out, format="PNG")
    attention = classify(client, out.getvalue()).json()["predictions"][0]["attention"]
    values = np.array(attention["values"])
    assert (attention["height"], attention["width"]) == values.shape == (4, 4)
    assert values.min() >= 0 and values.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.unravel_index(values.argmax(), values.shape) == (0, 0)


def test_attention_modes(client: TestClient) -> None:
    image = solid_png(COLOURS["blue"])
    assert classify(client, image, attention="none").json()["predictions"][0]["attention"] is None
    grid = classify(client, image, attention="grid").json()["predictions"][0]["attention"]
    assert grid["overlay_png"] is None
    overlay = classify(client, image, attention="overlay").json()["predictions"][0]["attention"]
    png = base64.b64decode(overlay["overlay_png"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert overlay["values"] == grid["values"]


def test_gap_model_has_no_attention(app_client, gap_model_path) -> None:
    client = app_client(gap_model_path)
    assert client.get("/v1/model").json()["attention"] is None
    prediction = classify(client, solid_png(COLOURS["red"]), attention="overlay").json()["predictions"][0]
    assert prediction["top_k"][0]["label"] == "red" and prediction["attention"] is None


def test_metrics_exposes_every_documented_family(client: TestClient) -> None:
    classify(client, solid_png(COLOURS["red"]), solid_png(COLOURS["blue"]))
    client.post("/classify", content=b"x", headers={"content-type": "text/plain"})
    text = client.get("/metrics").text
    for family in (
        "castream_requests_total",
        "castream_request_duration_seconds_bucket",
        "castream_queue_wait_seconds_bucket",
        "castream_inference_duration_seconds_bucket",
        "castream_decode_duration_seconds_bucket",
        "castream_batch_size_images_bucket",
        "castream_queue_depth",
        "castream_requests_in_flight",
        "castream_rejections_total",
        "castream_images_classified_total",
        "castream_ready",
        "castream_model_info",
    ):
        assert family in text, family
    assert 'castream_requests_total{route="/classify",status="200"} 1.0' in text
    assert 'castream_rejections_total{reason="unsupported_content_type"} 1.0' in text
    assert "castream_images_classified_total 2.0" in text
    assert "castream_ready 1.0" in text
    assert 'provider="CPUExecutionProvider"' in text


def test_page_and_openapi(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="file"' in page.text and "`classify?${query()}`" in page.text
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/classify"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/static-offline-docs/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200


def test_unknown_route_and_method_are_json_errors(client: TestClient) -> None:
    assert client.get("/nope").json()["code"] == "not_found"
    response = client.get("/classify")
    assert response.status_code == 405 and response.json()["code"] == "method_not_allowed"
