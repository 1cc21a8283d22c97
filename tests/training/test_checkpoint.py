"""Checkpoints: self-describing, loadable with weights_only, never half written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training import checkpoint


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_partial_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "castream.pt"
    checkpoint.save({"epoch": 1, "weights": torch.ones(3)}, path)

    def crash(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt  # as if the process were interrupted mid-write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save({"epoch": 2, "weights": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert checkpoint.load(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["castream.pt"]


def test_load_refuses_missing_foreign_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="training.fit"):
        checkpoint.load(tmp_path / "absent.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, foreign)
    with pytest.raises(ValueError, match="not a castream checkpoint"):
        checkpoint.load(foreign)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="could not read checkpoint"):
        checkpoint.load(corrupt)


def test_trained_checkpoint_rebuilds_the_model_alone(tiny_checkpoint: Path) -> None:
    state = torch.load(tiny_checkpoint, weights_only=True)
    assert state["stage"] == "done"
    assert state["model"] == {"backbone": "resnet18", "num_classes": 10, "stream_taps": "all"}
    assert len(state["classes"]) == 10
    assert state["preprocessing"]["crop"] == 64
    assert set(state["metrics"]) == {"val_top1_gap", "val_top1_ca"}
    model = checkpoint.build_model(state)
    logits, attention = model(torch.zeros(1, 3, 64, 64))
    assert logits.shape == (1, 10) and attention.shape == (1, 2, 2)
