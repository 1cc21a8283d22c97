"""KServe's Python SDK for the tests: PyPI's ``kserve`` in a venv of its own, and its client run against a server.

The SDK pins protobuf, psutil and others below what the project's .venv holds (onnx needs the newer protobuf), so it
lives in ``.cache/kserve-venv``, built from PyPI on first use and reused while its package list is unchanged.
``kserve_client.py`` beside this file runs inside it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.deploy import venvs
from tests.service.servicetools import REPO

VENV = REPO / ".cache" / "kserve-venv"
PACKAGES = ("kserve==0.21.0",)
CLIENT = Path(__file__).with_name("kserve_client.py")


def ensure_venv() -> Path:
    """The venv's Python, built where it is missing or stale; a failed build fails the test (no skip)."""
    return venvs.ensure_venv(VENV, PACKAGES)


def run_client(url: str, model: str, folder: Path, timeout_s: float = 300) -> dict[str, Any]:
    """Run ``kserve_client.py`` against ``url`` on the inputs in ``folder``; its report (arrays in ``answers.npz``)."""
    command = [str(ensure_venv()), str(CLIENT), url, model, str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, f"the KServe client failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.splitlines()[-1])
