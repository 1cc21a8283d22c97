"""Fixtures for the benchmark tests: the service tests' tiny ONNX models (no torch, milliseconds to run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.service.servicetools import save_model

INT8_CHECKS = {
    "images": 64,
    "top1": 0.995,
    "peak": 0.97,
    "correlation": 0.99,
    "reference_accuracy": 0.9,
    "candidate_accuracy": 0.89,
    "speedup": 2.5,
    "thresholds": {"top1": 0.99, "peak": 0.95, "correlation": 0.95, "speedup": 0.0},
}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tmp_path_factory.mktemp("models") / "tiny-ca.onnx")


@pytest.fixture(scope="session")
def tiny_int8_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same graph labelled as an int8 export, with the agreement figures such an export records."""
    verification = json.dumps({"parity": [], "int8": INT8_CHECKS})
    path = tmp_path_factory.mktemp("models") / "tiny-int8.onnx"
    return save_model(path, precision="int8", verification=verification)
