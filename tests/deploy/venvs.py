"""Virtual environments of their own for test clients and servers whose pins clash with the project's .venv.

Each is built from PyPI under ``.cache/`` on first use and reused while its package list is unchanged (a stamp file
holds the list); a failed build fails the test that needs it, with pip's output (no skip).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

INSTALL_TIMEOUT_S = 1200


def ensure_venv(venv: Path, packages: Sequence[str], finish: Callable[[Path], None] | None = None) -> Path:
    """``venv`` with ``packages`` installed, built where it is missing or stale; ``finish(venv)`` runs after a
    build, before the stamp is written. Returns the venv's Python."""
    stamp, wanted = venv / ".installed", "\n".join(packages) + "\n"
    python = venv / "bin" / "python"
    if stamp.is_file() and stamp.read_text() == wanted:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *packages],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        except subprocess.TimeoutExpired as error:
            raise AssertionError(f"building {venv} timed out after {INSTALL_TIMEOUT_S} s: {step}") from error
        if done.returncode != 0:
            raise AssertionError(f"building {venv} failed ({step}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    if finish is not None:
        finish(venv)
    stamp.write_text(wanted)
    return python
