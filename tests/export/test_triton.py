"""``python -m export.to_onnx --triton-repository``: the verified file and its Triton model repository in one run."""

from __future__ import annotations

from pathlib import Path

import pytest

from export import to_onnx
from export.pipeline import ExportOptions
from tests.deploy.tritontools import check_repository


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_export_writes_a_triton_repository_for_the_file(
    tiny_checkpoint: Path, tmp_path: Path, kind: str, capsys: pytest.CaptureFixture
) -> None:
    out, repository = tmp_path / "castream.onnx", tmp_path / "triton-models"
    argv = ["--checkpoint", str(tiny_checkpoint), "--out", str(out), "--verify-images", "8"]
    assert to_onnx.main([*argv, "--triton-repository", str(repository), "--triton-kind", kind]) == 0
    (folder,) = repository.iterdir()
    assert folder.name == "castream-resnet18-ca"
    config = check_repository(folder, out)  # the same bytes as the exported file, its tensors and labels
    (group,) = config.instance_group
    assert group.kind == (group.KIND_GPU if kind == "gpu" else group.KIND_CPU)
    assert f"Triton model repository: {repository} (model {folder.name})" in capsys.readouterr().out


def test_export_without_the_flag_writes_no_repository(tiny_checkpoint: Path, tmp_path: Path) -> None:
    argv = ["--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "m.onnx"), "--verify-images", "8"]
    assert to_onnx.main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_an_unknown_instance_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown Triton instance kind 'tpu'"):
        ExportOptions(triton_kind="tpu")
