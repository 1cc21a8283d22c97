"""The shipped default model: it loads with this code, in the current format, and is what its records say."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest
import torch

from training import checkpoint
from training.data import DEFAULT_CACHE, Batches, SyntheticSource
from training.engine import TrainingContext, top1

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / checkpoint.DEFAULT
FIX = (
    "the shipped checkpoint must load with every later commit: migrate it (training/checkpoint.py MIGRATIONS), or "
    "retrain it with `make train`, replace checkpoints/default/ with runs/default/ and re-export with `make export`"
)


@pytest.fixture(scope="module")
def shipped() -> checkpoint.Checkpoint:
    raw = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    assert raw.get("format_version") == checkpoint.FORMAT_VERSION, f"format {raw.get('format_version')}; {FIX}"
    try:
        return checkpoint.load(SHIPPED)
    except ValueError as error:
        pytest.fail(f"{error}; {FIX}")


def test_the_shipped_checkpoint_is_one_finished_run_with_its_records(shipped: checkpoint.Checkpoint) -> None:
    assert shipped.finished and shipped.model.backbone == "resnet18" and shipped.data.kind == "synthetic"
    metrics = json.loads((SHIPPED.parent / "metrics.json").read_text())
    config = json.loads((SHIPPED.parent / "config.json").read_text())
    assert shipped.metrics == {k: metrics[k] for k in ("val_top1_gap", "val_top1_ca")}
    assert shipped.config == config
    assert SHIPPED.stat().st_size <= 50 * 2**20
    assert sorted(p.name for p in SHIPPED.parent.iterdir()) == ["castream.pt", "config.json", "metrics.json"]


def test_git_holds_the_shipped_files_readable_by_everyone() -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-s", str(SHIPPED.parent)], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    modes = {line.split("\t")[1]: line.split()[0] for line in listed if line}
    folder = checkpoint.DEFAULT.rsplit("/", 1)[0]
    assert set(modes) == {f"{folder}/{name}" for name in ("castream.pt", "config.json", "metrics.json")}
    for path, mode in modes.items():
        assert mode == "100644", path  # not executable, and no other kind of entry
        assert stat.S_IMODE((REPO / path).stat().st_mode) & 0o444 == 0o444, path


@pytest.mark.slow  # ~30 s: 1,000 validation images through ResNet-18 at 112 px
def test_the_shipped_model_scores_exactly_its_recorded_validation_top1(shipped: checkpoint.Checkpoint) -> None:
    val = SyntheticSource(shipped.data.synthetic_spec("val"), shipped.preprocessing, DEFAULT_CACHE)
    options = shipped.config["options"]
    batches = Batches(val, options["batch_size"], False, options["seed"])
    policy = shipped.config["runtime"]["precision"]
    context = TrainingContext(device=torch.device("cpu"), precision=policy, progress=False)
    measured = top1(shipped.build_model(), batches, context, ("gap", "ca"))
    assert measured == shipped.metrics
