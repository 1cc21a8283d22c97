"""Class maps and overlays through ``POST /classify``: maps per top-k entry, explain=, 422s, whole-image overlays."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.metadata import Preprocessing
from service.overlay import LUT, heat_overlay, image_overlay
from service.preprocess import Preprocessor
from tests.service.servicetools import CLASSES, COLOURS, PREPROCESSING, record_fetches, save_model, solid_png


def classify(client: TestClient, image: bytes, **params: object):
    return client.post("/classify", files=[("file", ("img.png", image, "image/png"))], params=params)


def _two_colours(size: tuple[int, int] = (64, 48)) -> bytes:
    """Left half red, right half blue: the red logit's evidence sits on the left, blue's on the right."""
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[:, : size[0] // 2] = COLOURS["red"]
    pixels[:, size[0] // 2 :] = COLOURS["blue"]
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _reference(model_path: Path, image: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The model file's own logits [K] and class maps [K, h, w] for ``image``, straight from ONNX Runtime."""
    prepared = Preprocessor(Preprocessing.from_dict(PREPROCESSING))(Image.open(io.BytesIO(image)).convert("RGB"))
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    logits, maps = session.run(["logits", "class_maps"], {"image": prepared.input[None]})
    return logits[0], maps[0]


def test_class_maps_true_adds_each_top_k_class_map_in_logit_units(client: TestClient, model_path: Path) -> None:
    image = _two_colours()
    body = classify(client, image, top_k=4, class_maps="true").json()
    logits, maps = _reference(model_path, image)
    entries = body["predictions"][0]["top_k"]
    assert sorted(e["label"] for e in entries) == sorted(CLASSES)
    for entry in entries:
        grid = np.array(entry["map"]["values"])
        assert (entry["map"]["height"], entry["map"]["width"]) == grid.shape == (4, 4)
        np.testing.assert_allclose(grid, maps[entry["index"]], rtol=0, atol=1e-6)
        assert grid.sum() + entry["map"]["constant"] == pytest.approx(float(logits[entry["index"]]), abs=1e-5)
    red, blue = (np.array(next(e for e in entries if e["label"] == name)["map"]["values"]) for name in ("red", "blue"))
    assert red[:, :2].sum() > red[:, 2:].sum() and blue[:, 2:].sum() > blue[:, :2].sum()
    assert body["predictions"][0]["explained"] == []


def test_without_asking_there_are_no_maps(client: TestClient) -> None:
    prediction = classify(client, _two_colours()).json()["predictions"][0]
    assert all(entry["map"] is None for entry in prediction["top_k"])


def test_explain_adds_named_classes_outside_the_top_k(client: TestClient, model_path: Path) -> None:
    image = solid_png(COLOURS["red"])
    response = client.post(
        "/classify",
        files=[("file", ("img.png", image, "image/png"))],
        params=[("top_k", 1), ("explain", "dark"), ("explain", "green")],
    )
    assert response.status_code == 200
    prediction = response.json()["predictions"][0]
    assert [e["label"] for e in prediction["top_k"]] == ["red"] and prediction["top_k"][0]["map"] is None
    assert [e["label"] for e in prediction["explained"]] == ["dark", "green"]
    _, maps = _reference(model_path, image)
    for entry in prediction["explained"]:
        assert entry["index"] == CLASSES.index(entry["label"]) and 0 <= entry["score"] < 0.5
        np.testing.assert_allclose(entry["map"]["values"], maps[entry["index"]], rtol=0, atol=1e-6)


def test_an_unknown_label_is_a_422_that_lists_the_classes(client: TestClient) -> None:
    response = classify(client, solid_png(COLOURS["red"]), explain="purple")
    assert response.status_code == 422
    assert response.json()["code"] == "unknown_label"
    assert "'purple'" in response.json()["detail"] and "'red'" in response.json()["detail"]


def test_a_gap_model_exported_before_class_activation_maps_has_none(app_client, gap_model_path: Path) -> None:
    client = app_client(gap_model_path)
    described = client.get("/v1/model").json()
    assert described["class_maps"] is False
    assert described["explanation"] == {"class_maps": None, "attention": False}
    for params in ({"class_maps": "true"}, {"explain": "red"}):
        response = classify(client, solid_png(COLOURS["red"]), **params)
        assert response.status_code == 422 and response.json()["code"] == "no_class_maps"
        detail = response.json()["detail"]
        assert "before GAP models had class maps" in detail and "re-export" in detail


def test_a_gap_model_serves_its_class_activation_maps(app_client, tmp_path: Path) -> None:
    path = save_model(tmp_path / "cam.onnx", "gap", class_maps=True)
    client = app_client(path)
    described = client.get("/v1/model").json()
    assert described["class_maps"] is True and described["attention"] is None
    assert described["explanation"] == {"class_maps": "cam", "attention": False}
    image = _two_colours()
    body = classify(client, image, class_maps="true", explain="blue", top_k=2).json()
    assert body["explanation"] == {"class_maps": "cam", "attention": False}
    (prediction,) = body["predictions"]
    assert prediction["attention"] is None  # no learned attention: none is made up
    logits, maps = _reference(path, image)
    for entry in [*prediction["top_k"], *prediction["explained"]]:
        grid = np.array(entry["map"]["values"])
        np.testing.assert_allclose(grid, maps[entry["index"]], atol=1e-6)
        assert grid.sum() + entry["map"]["constant"] == pytest.approx(float(logits[entry["index"]]), abs=1e-5)
    # Each cell's own evidence, as much as any other's would be: blue's on the right half of the crop.
    blue = np.array(prediction["explained"][0]["map"]["values"])
    assert blue[:, 2:].min() > blue[:, :2].max()


def test_an_older_model_file_without_the_output_still_serves(app_client, tmp_path: Path) -> None:
    client = app_client(save_model(tmp_path / "older.onnx", class_maps=False))
    assert client.get("/v1/model").json()["class_maps"] is False
    plain = classify(client, solid_png(COLOURS["green"]))
    assert plain.status_code == 200 and plain.json()["predictions"][0]["top_k"][0]["label"] == "green"
    refused = classify(client, solid_png(COLOURS["green"]), class_maps="true")
    assert refused.status_code == 422 and refused.json()["code"] == "no_class_maps"
    assert "re-export" in refused.json()["detail"]


def test_class_maps_are_fetched_only_for_batches_that_need_them(client: TestClient) -> None:
    fetched = record_fetches(client)
    classify(client, solid_png(COLOURS["red"]))
    classify(client, solid_png(COLOURS["red"]), class_maps="true")
    assert fetched == [["logits", "attention"], ["logits", "attention", "class_maps"]]


def _png(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def test_whole_image_overlays_have_the_original_size(client: TestClient) -> None:
    image = _two_colours(size=(90, 50))
    params = [("attention", "overlay"), ("overlay_on", "image"), ("explain", "blue"), ("class_maps", "true")]
    response = client.post("/classify", files=[("file", ("img.png", image, "image/png"))], params=params)
    prediction = response.json()["predictions"][0]
    overlays = [prediction["attention"]["overlay_png"], prediction["explained"][0]["map"]["overlay_png"]]
    overlays += [entry["map"]["overlay_png"] for entry in prediction["top_k"]]
    for overlay in overlays:
        assert _png(overlay).size == (90, 50)
    crop = classify(client, image, attention="overlay").json()["predictions"][0]["attention"]["overlay_png"]
    assert _png(crop).size == (224, 224)  # the 32 px crop, scaled up to be visible


def test_image_overlay_colours_the_crop_and_dims_the_rest() -> None:
    original = np.full((40, 100, 3), 200, np.uint8)
    grid = np.array([[0.0, 1.0], [0.0, 0.0]], np.float32)
    out = np.asarray(Image.open(io.BytesIO(image_overlay(original, grid, (30.0, 0.0, 70.0, 40.0)))))
    assert out.shape == (40, 100, 3)
    assert (out[:, :25] < 100).all() and (out[:, 75:] < 100).all()  # outside the box: dimmed
    assert (out[:, 30] == 255).all()  # the crop's outline
    hot, cold = out[10, 60].astype(int), out[30, 35].astype(int)  # the map's peak is in the top right
    assert np.abs(hot - LUT[255]).sum() < np.abs(cold - LUT[255]).sum()


def test_the_colour_table_is_viridis() -> None:
    from matplotlib import colormaps

    reference = colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255
    assert LUT.shape == (256, 3) and LUT.dtype == np.uint8
    assert np.abs(LUT.astype(float) - reference).max() <= 6
    dark, light = LUT[0].astype(int).sum(), LUT[-1].astype(int).sum()
    assert light > dark  # ordered from dark to light, so grey prints keep the order


def test_negative_evidence_shows_as_none() -> None:
    view = np.full((8, 8, 3), 128, np.uint8)
    negative = np.asarray(Image.open(io.BytesIO(heat_overlay(view, -np.ones((2, 2), np.float32), min_side=8))))
    zero = np.asarray(Image.open(io.BytesIO(heat_overlay(view, np.zeros((2, 2), np.float32), min_side=8))))
    np.testing.assert_array_equal(negative, zero)
