"""The parity study: the largest rounding between ONNX Runtime and PyTorch, against the export's tolerance."""

from __future__ import annotations

from pathlib import Path

from export.parity import run as parity


def test_parity_reports_the_largest_rounding_against_the_tolerance(tiny_checkpoint: Path, tmp_path: Path) -> None:
    report = parity(str(tiny_checkpoint), images=8, batch_sizes=[1, 8], cache=tmp_path)
    assert [row["batch_size"] for row in report["rows"]] == [1, 8] and report["images"] == 8
    for name, worst in report["worst"].items():
        assert worst == max(row[name] for row in report["rows"])
        assert report["margin"][name] == report["tolerance"][name] / worst
