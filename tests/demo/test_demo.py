"""`make demo` from a clean checkout: it exports the shipped model and serves it, and never trains."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)  # the suite's own environment, already holding what the demo installs


def checkout(into: Path) -> Path:
    """The files a clean clone of this tree has: tracked ones and new ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in listed)):
        source = REPO / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    return into


def make(folder: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *args, f"VENV={VENV}"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "MAKEFLAGS": ""},
    )


def test_the_demo_installs_only_what_serving_and_exporting_need(tmp_path: Path) -> None:
    planned = subprocess.run(
        # -W: as if the checkpoint were new (a clean clone has no exported model yet)
        ["make", "-n", "-W", "checkpoints/default/castream.pt", "demo", f"VENV={tmp_path / 'fresh'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installs = [line for line in planned.splitlines() if "pip install" in line and " -e " in line]
    assert installs and all("'.[export,serve]'" in line for line in installs), planned
    assert "training.fit" not in planned and "training.reproduce" not in planned, planned
    assert "export.to_onnx" in planned, planned


@pytest.mark.slow  # ~1 min: exporting the default model with its parity checks
def test_the_demo_exports_the_shipped_model_and_serves_it_without_training(tmp_path: Path) -> None:
    clone = checkout(tmp_path / "clone")
    ready_check = REPO / "tests" / "demo" / "ready_check.py"
    # The environment is the suite's own: mark its demo install as current rather than install it again.
    done = make(clone, "demo", f"SERVE={VENV / 'bin' / 'python'} {ready_check}", "-o", str(VENV / ".installed-serve"),
                timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ready: a sample" in done.stdout, done.stdout[-2000:]
    assert not (clone / "runs").exists()  # nothing was trained
    model = clone / "models" / "castream.onnx"
    assert stat.S_IMODE(model.stat().st_mode) & 0o044 == 0o044  # a container's user can read it
    assert stat.S_IMODE(model.parent.stat().st_mode) & 0o055 == 0o055
