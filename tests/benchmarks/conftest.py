"""Fixtures for the benchmark tests: the service tests' tiny ONNX models (no torch, milliseconds to run), and the
export tests' exports of the tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.export.conftest import ca_export, gap_export, int8_export  # noqa: F401 (shared fixtures)
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


# Every section that needs no service process, measured for real with its quick budget.
OFFLINE_SECTIONS = (
    "batch",
    "image_size",
    "decode_parity",
    "int8",
    "onnx_speed",
    "train_speed",
    "insertion_deletion",
    "gpu",
)


@pytest.fixture(scope="session")
def quick_results(tiny_model: Path, tiny_int8_model: Path) -> dict:
    """The results of one quick ``benchmarks.report`` run of the offline sections on the tiny models."""
    from benchmarks.report import Options, run

    return run(Options(tiny_model, tiny_int8_model, OFFLINE_SECTIONS, quick=True))
