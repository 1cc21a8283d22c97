"""--weights: torchvision names (offline: a clear error), local state dicts, castream checkpoints."""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from training import weights


def test_torchvision_name_offline_says_which_file_to_put_where(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline, raising=False)
    with pytest.raises(RuntimeError) as error:
        weights.resolve("IMAGENET1K_V1", "resnet18")
    expected = tmp_path / "checkpoints" / "resnet18-f37072fd.pth"
    assert str(expected) in str(error.value)
    assert "download.pytorch.org" in str(error.value)


def test_torchvision_name_loads_a_file_placed_in_the_hub_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    saved = torchvision.models.resnet18().state_dict()
    target = tmp_path / "checkpoints" / "resnet18-f37072fd.pth"
    target.parent.mkdir()
    torch.save(saved, target)
    loaded = weights.resolve("IMAGENET1K_V1", "resnet18")
    # torchvision verifies the file's hash prefix only when asked; the tensors are what we saved.
    assert loaded.kind == "torchvision" and loaded.pretrained and loaded.num_classes == 1000
    assert torch.equal(loaded.state_dict["fc.weight"], saved["fc.weight"])
    assert loaded.transforms.crop_size == [224]


def test_unknown_weights_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="IMAGENET1K_V2"):
        weights.resolve("IMAGENET9K", "resnet50")


def test_local_state_dict_file(tmp_path: Path) -> None:
    path = tmp_path / "net.pth"
    torch.save({f"module.{k}": v for k, v in torchvision.models.resnet18(num_classes=3).state_dict().items()}, path)
    loaded = weights.resolve(str(path), "resnet18")
    assert loaded.kind == "file" and loaded.num_classes == 3 and "fc.weight" in loaded.state_dict
    with pytest.raises(FileNotFoundError, match="does not exist"):
        weights.resolve(str(tmp_path / "missing.pth"), "resnet18")
    with pytest.raises(FileNotFoundError):
        weights.resolve(os.path.join("nowhere", "x"), "resnet18")


def test_castream_checkpoint_as_weights(tiny_checkpoint: Path) -> None:
    loaded = weights.resolve(str(tiny_checkpoint), "resnet18")
    assert loaded.kind == "checkpoint" and loaded.num_classes == 10
    with pytest.raises(ValueError, match="holds a resnet18 model"):
        weights.resolve(str(tiny_checkpoint), "resnet34")
