"""What the model knows: the sentence about its training data and the labelled images it carries, served."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.metadata import ModelError, parse_metadata
from tests.service.servicetools import COLOURS, SAMPLES, build_model, save_model, solid_png


def test_the_model_description_says_what_it_was_trained_on(client: TestClient) -> None:
    info = client.get("/v1/model").json()
    assert info["trained_on"] == "solid colours: 4 classes (red, green, blue, dark)"
    assert info["samples"] == len(SAMPLES)


def test_sample_images_are_listed_and_served_as_png(client: TestClient) -> None:
    listed = client.get("/v1/samples").json()
    assert [(s["index"], s["label"]) for s in listed] == list(enumerate(SAMPLES))
    for sample in listed:
        response = client.get("/" + sample["url"])
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert response.content == solid_png(COLOURS[sample["label"]])
        # Classifying a sample gives its own label: the page's one-click try.
        answer = client.post("/classify", files={"file": response.content}, params={"top_k": 1}).json()
        assert answer["predictions"][0]["top_k"][0]["label"] == sample["label"]


@pytest.mark.parametrize("index", ["2", "-1", "999999999999"])
def test_an_unknown_sample_is_a_404_that_says_how_many_there_are(client: TestClient, index: str) -> None:
    response = client.get(f"/v1/samples/{index}.png")
    assert response.status_code == 404
    assert response.json()["code"] == "no_sample" and "has 2" in response.json()["detail"]


def test_a_file_without_samples_serves_an_empty_list(app_client, tmp_path: Path) -> None:
    client = app_client(save_model(tmp_path / "bare.onnx", samples=None, trained_on=None))
    assert client.get("/v1/samples").json() == []
    info = client.get("/v1/model").json()
    assert info["samples"] == 0 and info["trained_on"] is None
    assert client.get("/v1/samples/0.png").status_code == 404


@pytest.mark.parametrize(
    "samples, reason",
    [
        ('{"label": "red"}', "expected a JSON list"),
        ('[{"png": ""}]', "entries"),
        (json.dumps([{"label": "red", "png": "!!not base64!!"}]), "base64"),
        (json.dumps([{"label": "red", "png": base64.b64encode(b"GIF89a").decode()}]), "not a PNG"),
    ],
)
def test_bad_samples_metadata_is_refused_by_name(samples: str, reason: str) -> None:
    props = {p.key: p.value for p in build_model(samples=samples).metadata_props}
    with pytest.raises(ModelError, match=rf"'samples' is invalid.*{reason}"):
        parse_metadata(props, "bad.onnx")
