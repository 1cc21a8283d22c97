"""The ONNX speed benchmark's functions, on the tiny run's graphs (structure of the report, not timings)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from benchmarks import onnx_speed
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
    assert report.latency.batch_size == 1 and report.throughput.batch_size == 4
    assert report.latency.rounds >= 3 and report.throughput.rounds >= 3
    summary = report.to_dict()
    for key in ("ca_over_gap_latency", "int8_over_fp32_throughput"):
        assert np.isfinite(summary[key]) and summary[key] > 0
    assert set(summary["timings"]["batch4"]) == {"fp32-gap", "fp32-ca", "int8-ca", "rounds"}
    json.dumps(summary)
    text = onnx_speed.format_report(report)
    assert "CA/GAP latency ratio (batch 1)" in text and "int8/fp32 throughput ratio (batch 4)" in text


@pytest.mark.slow
def test_cli_builds_its_own_graphs_and_prints_json(capsys: pytest.CaptureFixture) -> None:
    assert onnx_speed.main(["--backbone", "resnet18", "--image-size", "64", "--budget-s", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backbone"] == "resnet18" and report["image_size"] == 64
    assert report["ca_over_gap_latency"] > 0 and report["int8_over_fp32_throughput"] > 0
