"""The commands the tests run the way users do: a tiny training run, the export command and the evaluation."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "checkpoints" / "default" / "castream.pt"  # the default model the repository ships
METHODS = [("Grad-CAM", "gap"), ("Grad-CAM", "ca"), ("Raw attention", "ca"), ("Class-specific map", "ca")]


def fit_tiny(out: Path, **options: Any) -> Path:
    """A run of one baseline and one stream epoch on 64 px synthetic images, on one thread (the run is tiny, and a
    second thread only contends with whatever else the machine runs); ``options`` override ``FitOptions``'
    fields. Returns its checkpoint."""
    import torch

    from training.pipeline import FitOptions, fit

    settings: dict[str, Any] = {"image_size": 64, "synthetic_train": 128, "synthetic_val": 32, "epochs": 1,
                                "baseline_epochs": 1, "recipe": "paper", "batch_size": 32,
                                "progress": False}  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(FitOptions(**{**settings, **options, "out": str(out)}))
    finally:
        torch.set_num_threads(threads)
    return out / "castream.pt"


def export_command(checkpoint: Path | None, out: Path, *flags: str, env: dict[str, str] | None = None) -> Path:
    """``python -m export.to_onnx`` on ``checkpoint`` (None: what ``flags`` name, such as ``--weights``) into ``out``
    (16 verification images), as a user runs it, with ``env`` added to the environment."""
    source = [] if checkpoint is None else ["--checkpoint", str(checkpoint)]
    command = [sys.executable, "-m", "export.to_onnx", *source, "--out", str(out), "--verify-images", "16", *flags]
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})}
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return out


@dataclass(frozen=True)
class ExportedClassifier:
    """A torchvision classifier exported as it is: its model file, and the state dict it was exported from."""

    model: Path
    weights: Path


def random_weights(backbone: str, path: Path, seed: int = 0) -> Path:
    """torchvision's ``backbone`` with random weights, saved as a state dict at ``path`` as a user's own file would be.

    Every 1-D parameter (biases, normalisation scales and shifts) is drawn too, away from torchvision's neutral start
    (zeros and ones), so that the heads' constants and per-image factors are not trivially 0 and 1.
    """
    import torch
    import torchvision

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = torchvision.models.get_model(backbone, weights=None)
    with torch.no_grad():
        for parameter in net.parameters():
            if parameter.dim() == 1:
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def evaluate_tiny(checkpoint: Path, out: Path) -> list[dict[str, str]]:
    """``python -m interpret.evaluate`` on 3 images with Grad-CAM, the raw attention and the class map; its CSV rows,
    checked to hold every method on its pooling with scores in range."""
    from interpret import evaluate
    from tests.interpret.conftest import read_csv

    argv = ["--checkpoint", str(checkpoint), "--limit", "3", "--methods", "gradcam", "attention", "classmap"]
    assert (
        evaluate.main([*argv, "--pixels-per-step", "512", "--grid-images", "2", "--out", str(out), "--no-progress"])
        == 0
    )
    rows = read_csv(out / "interpretability.csv")
    assert [(row["method"], row["pooling"]) for row in rows] == METHODS
    for row in rows:
        assert row["images"] == "3"
        for metric in ("ad", "ag", "ai", "insertion", "deletion", "pointing", "energy"):
            assert 0.0 <= float(row[metric]) <= 100.0
    return rows


def serve_and_compare(model_file: Path, images: list[bytes]) -> tuple[dict[str, Any], Any, tuple[int, ...]]:
    """``images`` through the service's app on ``model_file`` (``/classify``, top 3 with class maps), each answer
    checked against ONNX Runtime run on the file directly: the top class and its label, the attention grid (none for a
    model without attention, as GAP), and the top class's map, its values and its sum with its constant the logit.
    Returns ``/v1/model``'s answer, the file's metadata and the grid's shape."""
    import numpy as np
    import onnxruntime as ort
    import pytest
    from fastapi.testclient import TestClient

    from export.verify import FP32, allowed_error
    from service.app import create_app
    from service.imaging import decode
    from service.metadata import parse_metadata
    from service.preprocess import Preprocessor
    from tests.service.servicetools import make_settings, wait_ready

    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    metadata = parse_metadata(session.get_modelmeta().custom_metadata_map, str(model_file))
    with TestClient(create_app(make_settings(model_file))) as client:
        wait_ready(client)
        info = client.get("/v1/model").json()
        files, params = [("file", image) for image in images], {"top_k": 3, "class_maps": "true"}
        response = client.post("/classify", files=files, params=params)
    assert response.status_code == 200, response.text
    prepare = Preprocessor(metadata.preprocessing)
    batch = np.stack([prepare(decode(image, 10**7)).input for image in images])
    names = [o.name for o in session.get_outputs() if o.name in ("logits", "attention", "class_maps")]
    direct = dict(zip(names, session.run(names, {"image": batch}), strict=True))
    allowed, _ = allowed_error("class_maps", FP32, direct)
    for index, prediction in enumerate(response.json()["predictions"]):
        row, top = direct["logits"][index], prediction["top_k"][0]
        assert top["index"] == int(row.argmax()) and top["label"] == metadata.classes[top["index"]]
        attention = prediction["attention"]
        if "attention" in direct:
            np.testing.assert_allclose(np.array(attention["values"]), direct["attention"][index], atol=1e-6)
        else:
            assert attention is None
        values = np.array(top["map"]["values"])
        np.testing.assert_allclose(values, direct["class_maps"][index, top["index"]], rtol=0, atol=allowed)
        assert values.sum() + top["map"]["constant"] == pytest.approx(float(row[top["index"]]), abs=allowed)
    return info, metadata, tuple(direct["class_maps"].shape[2:])
