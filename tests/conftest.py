"""Fixtures shared by every test package: a tiny trained run that the later stages start from."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.runs import SHIPPED, export_command, fit_tiny


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-18 run on 64 px synthetic images, one baseline and one stream epoch (seconds on a CPU).

    Returns the run folder; its checkpoint is ``castream.pt``. The paper's start: decisive attention and logits
    after a few steps. The default start (exactly GAP, uniform attention) leaves so short a run's maps near ties,
    where int8 agreement measures nothing.
    """
    out = tmp_path_factory.mktemp("tiny-run")
    fit_tiny(out, synthetic_train=256, synthetic_val=64)
    return out


@pytest.fixture(scope="session")
def shipped_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped default model, exported by the command line as `make demo` does."""
    return export_command(SHIPPED, tmp_path_factory.mktemp("shipped") / "castream.onnx")


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run: Path) -> Path:
    return tiny_run / "castream.pt"
