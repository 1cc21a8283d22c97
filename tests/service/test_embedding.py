"""``embedding``: the pooled vector the classifier reads, served by /classify?embedding=true and by /v2 like any
output, for several images of one batch in order; a file exported before it still serves everything else."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.contract import Preprocessing, output_names
from service.preprocess import Preprocessor
from tests.service.servicetools import COLOURS, PREPROCESSING, record_fetches, save_model, solid_png

NAMES = ["blue", "red", "dark", "green"]


@pytest.fixture(scope="module")
def embedding_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("embedding-models")
    return {kind: save_model(folder / f"{kind}.onnx", kind, embedding=True) for kind in ("ca", "gap")}


def _images() -> list[bytes]:
    return [solid_png(COLOURS[name], size=(40 + 3 * i, 48)) for i, name in enumerate(NAMES)]


def _expected(model: Path, images: list[bytes]) -> dict[str, np.ndarray]:
    """ONNX Runtime's own logits and embeddings for ``images``, preprocessed as the service does."""
    prepare = Preprocessor(Preprocessing.from_dict(PREPROCESSING))
    batch = np.stack([prepare(Image.open(io.BytesIO(data)).convert("RGB")).input for data in images])
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return dict(zip(["logits", "embedding"], session.run(["logits", "embedding"], {"image": batch}), strict=True))


def _classify(client: TestClient, images: list[bytes], **params: object):
    return client.post("/classify", files=[("file", (f"{i}.png", d, "image/png")) for i, d in enumerate(images)],
                       params=params)  # fmt: skip


@pytest.mark.parametrize("kind", ["ca", "gap"])
def test_classify_returns_each_images_embedding_in_order(app_client, embedding_models, kind: str) -> None:
    client = app_client(embedding_models[kind], max_batch_size=8)
    fetched = record_fetches(client)
    images = _images()
    response = _classify(client, images, embedding="true", top_k=1)
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    expected = _expected(embedding_models[kind], images)
    assert fetched == [[*(["logits", "attention"] if kind == "ca" else ["logits"]), "embedding"]]  # one batch
    assert [p["top_k"][0]["label"] for p in predictions] == NAMES
    for prediction, vector in zip(predictions, expected["embedding"], strict=True):
        assert len(prediction["embedding"]) == 3
        np.testing.assert_allclose(prediction["embedding"], vector, rtol=0, atol=1e-6)
    plain = _classify(client, images[:1]).json()["predictions"][0]
    assert plain["embedding"] is None and fetched[-1] == (["logits", "attention"] if kind == "ca" else ["logits"])


def test_v2_returns_the_embedding_when_asked_for_it(app_client, embedding_models) -> None:
    client = app_client(embedding_models["ca"], max_batch_size=8)
    fetched = record_fetches(client)
    images = _images()
    data = [base64.b64encode(image).decode() for image in images]
    body = {
        "inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [len(images)], "data": data}],
        "outputs": [{"name": "embedding"}],
    }
    response = client.post("/v2/models/tiny-ca/infer", json=body)
    assert response.status_code == 200
    (output,) = response.json()["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("embedding", "FP32", [len(images), 3])
    values = np.array(output["data"], np.float32).reshape(output["shape"])
    np.testing.assert_allclose(values, _expected(embedding_models["ca"], images)["embedding"], rtol=0, atol=1e-6)
    assert fetched == [["logits", "attention", "embedding"]]  # the whole batch at once, with what the monitor reads
    listed = client.get("/v2/models/tiny-ca").json()["outputs"][-1]
    assert listed == {"name": "embedding", "datatype": "FP32", "shape": [-1, 3]}


def test_a_file_exported_before_the_embedding_serves_the_rest_and_refuses_it(app_client, tmp_path: Path) -> None:
    client = app_client(save_model(tmp_path / "older.onnx"))  # logits, attention, class maps: no embedding
    assert [o["name"] for o in client.get("/v1/model").json()["outputs"]] == ["logits", "attention", "class_maps"]
    image = solid_png(COLOURS["green"])
    served = _classify(client, [image], class_maps="true").json()["predictions"][0]
    assert served["top_k"][0]["label"] == "green" and served["attention"] and served["embedding"] is None
    refused = _classify(client, [image], embedding="true")
    assert refused.status_code == 422 and refused.json()["code"] == "no_embedding"
    assert "exported before the 'embedding' output existed" in refused.json()["detail"]
    assert "python -m export.to_onnx" in refused.json()["detail"]
    body = {
        "inputs": [
            {"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(image).decode()]}
        ],
        "outputs": [{"name": "embedding"}],
    }
    v2 = client.post("/v2/models/tiny-ca/infer", json=body)
    assert v2.status_code == 400 and "has no embedding" in v2.json()["error"] and "re-export" in v2.json()["error"]


def test_a_gap_file_without_class_maps_or_embedding_still_serves(app_client, gap_model_path: Path) -> None:
    client = app_client(gap_model_path)  # logits only: written before the embedding existed
    assert [o["name"] for o in client.get("/v1/model").json()["outputs"]] == ["logits"]
    assert _classify(client, [solid_png(COLOURS["red"])]).json()["predictions"][0]["top_k"][0]["label"] == "red"
    assert _classify(client, [solid_png(COLOURS["red"])], embedding="true").json()["code"] == "no_embedding"


@pytest.mark.slow
def test_the_shipped_checkpoint_exports_and_serves_its_embedding(shipped_onnx: Path, app_client) -> None:
    client = app_client(shipped_onnx)
    info = client.get("/v1/model").json()
    assert [o["name"] for o in info["outputs"]] == list(output_names("ca"))
    width = info["outputs"][-1]["shape"][-1]
    images = [solid_png(colour, size=(120, 90)) for colour in ((200, 30, 30), (30, 30, 200), (240, 240, 240))]
    body = _classify(client, images, embedding="true", class_maps="true").json()
    session = ort.InferenceSession(str(shipped_onnx), providers=["CPUExecutionProvider"])
    prepare = Preprocessor(Preprocessing.from_dict(info["preprocessing"]))
    batch = np.stack([prepare(Image.open(io.BytesIO(data)).convert("RGB")).input for data in images])
    (expected,) = session.run(["embedding"], {"image": batch})
    assert expected.shape == (len(images), width)
    for prediction, vector in zip(body["predictions"], expected, strict=True):
        np.testing.assert_allclose(prediction["embedding"], vector, rtol=0, atol=1e-5 * float(np.abs(vector).max()))
