"""KServe's Python SDK for the tests: PyPI's ``kserve`` in a venv of its own, and its client run against a server.

The SDK pins protobuf, psutil and others below what the project's .venv holds (onnx needs the newer protobuf), so it
lives in ``.cache/kserve-venv``, built from PyPI on first use and reused while its package list is unchanged.
``kserve_client.py`` beside this file runs inside it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.service.servicetools import REPO

VENV = REPO / ".cache" / "kserve-venv"
PACKAGES = ("kserve==0.21.0",)
STAMP = VENV / ".installed"
INSTALL_TIMEOUT_S = 1200
CLIENT = Path(__file__).with_name("kserve_client.py")


def ensure_venv() -> Path:
    """The venv's Python, building the venv where it is missing or stale; a failed build fails the test (no skip)."""
    python = VENV / "bin" / "python"
    wanted = "\n".join(PACKAGES) + "\n"
    if STAMP.is_file() and STAMP.read_text() == wanted:
        return python
    shutil.rmtree(VENV, ignore_errors=True)
    steps = [
        [sys.executable, "-m", "venv", str(VENV)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PACKAGES],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        except subprocess.TimeoutExpired as error:
            raise AssertionError(f"building {VENV} timed out after {INSTALL_TIMEOUT_S} s: {step}") from error
        if done.returncode != 0:
            raise AssertionError(f"building {VENV} failed ({step}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    STAMP.write_text(wanted)
    return python


def run_client(url: str, model: str, folder: Path, timeout_s: float = 300) -> dict[str, Any]:
    """Run ``kserve_client.py`` against ``url`` on the inputs in ``folder``; its report (arrays in ``answers.npz``)."""
    command = [str(ensure_venv()), str(CLIENT), url, model, str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, f"the KServe client failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.splitlines()[-1])
