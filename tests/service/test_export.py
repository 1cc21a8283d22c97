"""End to end: a training checkpoint, exported by ``python -m export.to_onnx``, served by the service."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.imaging import decode
from service.metadata import parse_metadata
from service.preprocess import Preprocessor
from tests.runs import export_command
from tests.service.servicetools import solid_png


@pytest.fixture(scope="module")
def exported(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_command(tiny_checkpoint, tmp_path_factory.mktemp("exported") / "castream.onnx")


@pytest.mark.slow
def test_the_exported_model_is_served_as_onnx_runtime_runs_it(exported: Path, app_client) -> None:
    client = app_client(exported)
    info = client.get("/v1/model").json()
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    metadata = parse_metadata(session.get_modelmeta().custom_metadata_map, str(exported))
    assert info["classes"] == list(metadata.classes) and info["pooling"] == "ca"
    assert info["input"]["shape"] == [None, 3, metadata.preprocessing.crop, metadata.preprocessing.crop]

    rng = np.random.default_rng(0)
    images = [solid_png(tuple(int(v) for v in rng.integers(0, 255, 3)), size=(90, 70)) for _ in range(3)]
    response = client.post("/classify", files=[("file", image) for image in images], params={"top_k": 3})
    assert response.status_code == 200
    prepare = Preprocessor(metadata.preprocessing)
    batch = np.stack([prepare(decode(image, 10**7)).input for image in images])
    logits, attention = session.run(["logits", "attention"], {"image": batch})
    for prediction, row, grid in zip(response.json()["predictions"], logits, attention, strict=True):
        assert prediction["top_k"][0]["index"] == int(row.argmax())
        assert prediction["top_k"][0]["label"] == metadata.classes[int(row.argmax())]
        values = np.array(prediction["attention"]["values"])
        assert values.shape == grid.shape == (info["attention"]["height"], info["attention"]["width"])
        np.testing.assert_allclose(values, grid, atol=1e-6)
        assert values.sum() == pytest.approx(1.0, abs=1e-4)
