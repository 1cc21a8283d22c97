"""One version for the project: pyproject.toml's, whether castream is installed or only service/ is copied."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from service.contract import VERSION
from tests.service.servicetools import REPO

DECLARED = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_the_installed_package_reports_the_declared_version() -> None:
    assert VERSION == DECLARED


def test_service_alone_as_the_image_holds_it_reads_the_copied_pyproject(tmp_path: Path) -> None:
    # As deploy/Dockerfile lays it out: /app/service/ and /app/pyproject.toml, and no castream package installed.
    shutil.copytree(REPO / "service", tmp_path / "service", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text().replace(DECLARED, "9.8.7"))
    code = (
        "import importlib.metadata as m\n"
        "def missing(name): raise m.PackageNotFoundError(name)\n"
        "m.version = missing  # as where castream was never installed\n"
        "import service.contract as c; print(c.__file__); print(c.VERSION)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(tmp_path / "service" / "contract.py"), "9.8.7"]
