"""The checkpoint contract: one typed record, loadable with weights_only, never half written, refused clearly."""

from __future__ import annotations

import stat
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from training import checkpoint, synthetic
from training.checkpoint import Checkpoint
from training.data import DataConfig, Preprocessing
from training.model import CAStreamNet, ModelConfig


def small_record(**changes) -> Checkpoint:
    torch.manual_seed(0)
    model = CAStreamNet(ModelConfig("resnet18", num_classes=len(synthetic.CLASSES)))
    record = Checkpoint(
        model=model.config,
        state_dict=model.state_dict(),
        classes=tuple(synthetic.CLASSES),
        preprocessing=Preprocessing(resize=64, crop=64),
        data=DataConfig(image_size=64, train_count=8, val_count=8),
        metrics={"val_top1_gap": 10.0, "val_top1_ca": 12.5},
    )
    return replace(record, **changes)


def test_a_record_survives_the_round_trip_with_every_field(tmp_path: Path) -> None:
    record = small_record(stage="stream", resume_point={"epoch": 2}, completed={"full": {"seconds": 1.0}})
    loaded = checkpoint.load(checkpoint.save(record, tmp_path / "castream.pt"))
    assert isinstance(loaded.preprocessing, Preprocessing) and loaded.preprocessing == record.preprocessing
    assert (loaded.model, loaded.data, loaded.classes) == (record.model, record.data, record.classes)
    assert (loaded.stage, loaded.resume_point, loaded.completed) == ("stream", {"epoch": 2}, {"full": {"seconds": 1.0}})
    assert loaded.metrics == record.metrics and not loaded.finished
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in record.state_dict.items())
    raw = torch.load(tmp_path / "castream.pt", weights_only=True)  # plain tensors and primitives only
    assert (raw["format"], raw["format_version"]) == (checkpoint.FORMAT, checkpoint.FORMAT_VERSION)


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_partial_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "castream.pt"
    checkpoint.save(small_record(resume_point={"epoch": 1}), path)

    def crash(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt  # as if the process were interrupted mid-write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(small_record(resume_point={"epoch": 2}), path)
    monkeypatch.undo()
    assert checkpoint.load(path).resume_point == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["castream.pt"]


def test_a_checkpoint_is_readable_by_others(tmp_path: Path) -> None:
    path = checkpoint.save(small_record(), tmp_path / "castream.pt")
    assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044  # group and others read, under a usual umask


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


def test_load_refuses_a_newer_format_and_names_both_versions(tmp_path: Path) -> None:
    raw = small_record().to_dict()
    raw["format_version"] = checkpoint.FORMAT_VERSION + 1
    torch.save(raw, tmp_path / "future.pt")
    with pytest.raises(
        ValueError, match=rf"format {checkpoint.FORMAT_VERSION + 1}, newer .*\({checkpoint.FORMAT_VERSION}\)"
    ):
        checkpoint.load(tmp_path / "future.pt")


def test_load_names_the_missing_fields(tmp_path: Path) -> None:
    raw = small_record().to_dict()
    del raw["preprocessing"], raw["data"]
    torch.save(raw, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="fields missing: preprocessing, data"):
        checkpoint.load(tmp_path / "partial.pt")


def test_load_refuses_invalid_values_with_the_reason(tmp_path: Path) -> None:
    raw = small_record().to_dict()
    raw["model"] = {**raw["model"], "backbone": "lenet"}
    torch.save(raw, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="invalid checkpoint record.*lenet"):
        checkpoint.load(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="3 class names for a model of 10 classes"):
        small_record(classes=("a", "b", "c"))


def test_an_older_format_is_migrated_on_reading(tmp_path: Path, monkeypatch) -> None:
    # As the next format would: pretend the current one is 2 and that format 1 lacked the metrics.
    raw = small_record().to_dict()
    del raw["metrics"]
    torch.save(raw, tmp_path / "old.pt")
    monkeypatch.setattr(checkpoint, "FORMAT_VERSION", checkpoint.FORMAT_VERSION + 1)
    monkeypatch.setitem(checkpoint.MIGRATIONS, checkpoint.FORMAT_VERSION - 1, lambda old: {**old, "metrics": {}})
    assert checkpoint.load(tmp_path / "old.pt").metrics == {}


def test_trained_checkpoint_rebuilds_the_model_alone(tiny_checkpoint: Path) -> None:
    record = checkpoint.load(tiny_checkpoint)
    assert record.finished
    assert record.model == ModelConfig("resnet18", 10, "all")
    assert len(record.classes) == 10
    assert record.preprocessing.crop == 64
    assert set(record.metrics) == {"val_top1_gap", "val_top1_ca"}
    logits, attention = record.build_model()(torch.zeros(1, 3, 64, 64))
    assert logits.shape == (1, 10) and attention.shape == (1, 2, 2)


def test_the_output_stride_is_recorded_and_older_files_read_as_32(tmp_path: Path) -> None:
    fine = ModelConfig("resnet18", len(synthetic.CLASSES), output_stride=16)
    record = small_record(model=fine)  # the same weights: the stride changes no parameter
    loaded = checkpoint.load(checkpoint.save(record, tmp_path / "fine.pt"))
    assert loaded.model.output_stride == 16 and loaded.build_model().backbone.output_stride == 16
    assert record.to_dict()["model"]["output_stride"] == 16
    # Stride 32 is written as before the field existed, with no entry: such files read as 32, in the same format.
    raw = small_record().to_dict()
    assert raw["model"] == {"backbone": "resnet18", "num_classes": len(synthetic.CLASSES), "stream_taps": "all"}
    torch.save(raw, tmp_path / "old.pt")
    assert checkpoint.load(tmp_path / "old.pt").model == ModelConfig("resnet18", len(synthetic.CLASSES), "all", 32)
