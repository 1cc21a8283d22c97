"""KServe's Python SDK against a real ``python -m service``: what a KServe user's code sees of castream's /v2.

The SDK runs in a venv of its own (tests/deploy/kservetools.py, built from PyPI on first use: slow once), as
``kserve_client.py``; its answers are compared here with ONNX Runtime run directly on the same inputs.
tritonclient, the other real client of the protocol, is tests/service/test_v2.py's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.deploy.kservetools import run_client
from tests.service.servicetools import CLASSES, COLOURS, run_directly, solid_png, tiny_inputs

MODEL = "tiny-ca"


@pytest.mark.slow
def test_kserves_client_reads_health_metadata_and_infers(live_server, model_path: Path, tmp_path: Path) -> None:
    server = live_server()
    batch = tiny_inputs(solid_png(COLOURS["red"]), solid_png(COLOURS["blue"], size=(30, 70)))
    np.save(tmp_path / "batch.npy", batch)
    files = [solid_png(COLOURS["green"]), solid_png(COLOURS["dark"], fmt="JPEG")]
    for index, data in enumerate(files):
        (tmp_path / f"file-{index}").write_bytes(data)

    report = run_client(server.url, MODEL, tmp_path)
    answers = np.load(tmp_path / "answers.npz")

    assert (report["live"], report["ready"], report["model_ready"], report["other_ready"]) == (True, True, True, False)
    assert report["server"]["name"] == "castream" and "classification" in report["server"]["extensions"]
    metadata = report["model"]
    assert metadata["name"] == MODEL and metadata["versions"] == ["0.1.0"]
    assert [(i["name"], i["datatype"], i["shape"]) for i in metadata["inputs"]] == [
        ("image", "FP32", [-1, 3, 32, 32]),
        ("image_bytes", "BYTES", [-1]),
    ]
    assert [o["name"] for o in metadata["outputs"]] == ["logits", "attention", "class_maps"]

    tensors, images = run_directly(model_path, batch), run_directly(model_path, tiny_inputs(*files))
    for kind in ("binary", "json"):
        assert report[f"fp32-{kind}"] == {"id": f"fp32-{kind}", "outputs": ["logits", "class_maps"]}
        for name in ("logits", "class_maps"):
            np.testing.assert_allclose(answers[f"fp32-{kind}-{name}"], tensors[name], rtol=0, atol=1e-6)

        encoded = report[f"bytes-{kind}"]
        assert encoded["id"] == f"bytes-{kind}" and encoded["outputs"] == ["logits", "attention"]
        np.testing.assert_allclose(answers[f"bytes-{kind}-attention"], images["attention"], rtol=0, atol=1e-6)
        for row, logits in zip(encoded["top"], images["logits"], strict=True):
            assert len(row) == 2
            value, index, label = row[0].split(":")
            assert int(index) == int(np.argmax(logits)) and label == CLASSES[int(index)]
            assert float(value) == pytest.approx(float(logits.max()), abs=1e-5)
        assert [row[0].split(":")[2] for row in encoded["top"]] == ["green", "dark"]
