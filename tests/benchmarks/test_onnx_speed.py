"""The ONNX speed benchmark's functions, on the tiny run's graphs (structure of the report, not timings)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from benchmarks import onnx_speed
from benchmarks.__main__ import main
from export.pipeline import ExportReport


def test_report_holds_both_headline_ratios(
    ca_export: ExportReport, gap_export: ExportReport, int8_export: ExportReport
) -> None:
    graphs = {
        onnx_speed.GAP: onnx.load(str(gap_export.path)),
        onnx_speed.CA: onnx.load(str(ca_export.path)),
        onnx_speed.INT8: onnx.load(str(int8_export.path)),
    }
    report = onnx_speed.measure(graphs, image_size=64, batch_size=4, threads=1, budget_s=0.3, backbone="resnet18")
    summary = report
    assert summary["timings"]["batch1"]["rounds"] >= 3 and summary["timings"]["batch4"]["rounds"] >= 3
    for key in ("ca_over_gap_latency", "int8_over_fp32_throughput"):
        assert np.isfinite(summary[key]) and summary[key] > 0
    assert set(summary["timings"]["batch4"]) == {"fp32-gap", "fp32-ca", "int8-ca", "rounds"}
    json.dumps(summary)
    text = "\n".join(onnx_speed.SECTIONS[0].render(summary, {}))
    assert "CA / GAP latency at batch 1: **" in text and "int8 / fp32 throughput of the CA graph at batch 4" in text


@pytest.mark.slow
def test_cli_builds_its_own_graphs_and_records_them(capsys: pytest.CaptureFixture, tmp_path) -> None:
    raw = tmp_path / "results.json"
    argv = ["onnx_speed", "--backbone", "resnet18", "--image-size", "64", "--budget-s", "1", "--json", str(raw)]
    assert main(argv) == 0
    assert "## CA against GAP, int8 against fp32" in capsys.readouterr().out
    report = json.loads(raw.read_text())["sections"]["onnx_speed"]["result"]
    assert report["backbone"] == "resnet18" and report["image_size"] == 64
    assert report["ca_over_gap_latency"] > 0 and report["int8_over_fp32_throughput"] > 0
