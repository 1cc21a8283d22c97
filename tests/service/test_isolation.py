"""service/ stays deployable without the training stack: no torch, torchvision, training or export."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.service.servicetools import REPO

FORBIDDEN = ("torch", "torchvision", "training", "export")


def test_importing_every_service_module_pulls_in_no_training_stack() -> None:
    modules = sorted(
        ".".join(path.relative_to(REPO).with_suffix("").parts) for path in (REPO / "service").rglob("*.py")
    )
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    loaded = set(json.loads(result.stdout))
    assert "service" in loaded and "onnxruntime" in loaded
    assert not loaded & set(FORBIDDEN), loaded & set(FORBIDDEN)
    assert len(modules) > 10


def test_no_service_source_mentions_the_training_stack() -> None:
    for path in (REPO / "service").rglob("*.py"):
        for line in path.read_text().splitlines():
            words = line.replace(",", " ").split()
            if words[:1] in (["import"], ["from"]):
                assert words[1].split(".")[0] not in FORBIDDEN, f"{path}: {line}"
