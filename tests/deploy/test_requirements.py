"""The images' pinned requirements: the whole serving closure, no torch, one onnxruntime package each."""

from __future__ import annotations

import re

import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version

from deploy.pin_requirements import OUTPUTS, closure, main, project_requirements
from tests.deploy.deploytools import DEPLOY


def pins(extra: str) -> dict[str, str]:
    found = {}
    for line in (DEPLOY / OUTPUTS[extra]).read_text().splitlines():
        if line and not line.startswith("#"):
            match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
            assert match, f"{OUTPUTS[extra]}: {line!r} is not an exact pin"
            found[canonicalize_name(match[1])] = match[2]
    return found


@pytest.mark.parametrize("extra", list(OUTPUTS))
def test_pins_cover_exactly_the_serving_closure(extra: str) -> None:
    needed = set(closure(project_requirements(extra)))
    pinned = set(pins(extra))
    assert pinned == needed, (
        f"missing {sorted(needed - pinned)}, not needed {sorted(pinned - needed)}: "
        "regenerate with `.venv/bin/python deploy/pin_requirements.py`"
    )


@pytest.mark.parametrize("extra", list(OUTPUTS))
def test_pins_satisfy_the_project_and_leave_out_training(extra: str) -> None:
    pinned = pins(extra)
    for requirement in project_requirements(extra):
        version = pinned[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(Version(version), prereleases=True), f"{requirement} vs {version}"
    assert not {"torch", "torchvision", "onnx", "onnxscript"} & set(pinned)


def test_cpu_and_gpu_pins_differ_only_in_the_onnxruntime_package() -> None:
    cpu, gpu = pins("serve"), pins("serve-gpu")
    assert "onnxruntime" in cpu and "onnxruntime-gpu" not in cpu
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu
    assert cpu.pop("onnxruntime") == gpu.pop("onnxruntime-gpu")
    assert cpu == gpu


@pytest.mark.parametrize("extra", list(OUTPUTS))
def test_the_images_can_trace_when_asked(extra: str) -> None:
    # Tracing is off unless OTEL_* variables ask for it; the images must carry what it needs when they do.
    assert {"opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"} <= set(pins(extra))


def test_the_test_environment_runs_the_images_versions() -> None:
    # The Makefile installs the environment with the CPU pins as constraints; a drift here means the images
    # would ship versions the suite never ran.
    assert main(["--check"]) == 0, "reinstall with `make .venv/.installed` or regenerate the pins"
