"""Fixtures shared by every test package: a tiny trained run that the later stages start from."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-18 run on 64 px synthetic images, one baseline and one stream epoch (seconds on a CPU).

    Returns the run folder; its checkpoint is ``castream.pt``.
    """
    import torch

    from training.pipeline import FitOptions, fit

    out = tmp_path_factory.mktemp("tiny-run")
    options = FitOptions(
        image_size=64,
        synthetic_train=256,
        synthetic_val=64,
        epochs=1,
        baseline_epochs=1,
        # The paper's start: decisive attention and logits after a few steps. The default start (exactly GAP,
        # uniform attention) leaves so short a run's maps near ties, where int8 agreement measures nothing.
        recipe="paper",
        batch_size=32,
        out=str(out),
        progress=False,
    )
    threads = torch.get_num_threads()
    # One thread: the run is tiny, and a second one only contends with whatever else the machine runs.
    torch.set_num_threads(1)
    try:
        fit(options)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run: Path) -> Path:
    return tiny_run / "castream.pt"
