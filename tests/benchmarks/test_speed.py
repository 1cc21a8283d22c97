"""The model's speed benchmarks: the graphs' headline ratios, int8 read back and timed, the class-map cost, and
the training step (structure and behaviour, not timings)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from benchmarks import speed
from benchmarks.__main__ import main
from benchmarks.speed import compare, int8_verification, steps, train_speed
from export.pipeline import ExportReport
from export.sessions import make_session
from tests.benchmarks.conftest import INT8_CHECKS
from tests.service.servicetools import save_model
from training.engine import TrainingContext
from training.model import CAStreamNet, ModelConfig


def test_report_holds_both_headline_ratios(
    ca_export: ExportReport, gap_export: ExportReport, int8_export: ExportReport
) -> None:
    graphs = {
        speed.GAP: onnx.load(str(gap_export.path)),
        speed.CA: onnx.load(str(ca_export.path)),
        speed.INT8: onnx.load(str(int8_export.path)),
    }
    report = speed.time_graphs(graphs, image_size=64, batch_size=4, threads=1, budget_s=0.3, backbone="resnet18")
    summary = report
    assert summary["timings"]["batch1"]["rounds"] >= 3 and summary["timings"]["batch4"]["rounds"] >= 3
    for key in ("ca_over_gap_latency", "int8_over_fp32_throughput"):
        assert np.isfinite(summary[key]) and summary[key] > 0
    assert set(summary["timings"]["batch4"]) == {"fp32-gap", "fp32-ca", "int8-ca", "rounds"}
    json.dumps(summary)
    text = "\n".join(speed.SECTIONS[1].render(summary, {}))
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


def test_compare_reads_the_agreement_and_times_both_models(tiny_model, tiny_int8_model) -> None:
    report = compare(tiny_model, tiny_int8_model, batch_size=2, budget_s=0)
    assert report["agreement"] == {key: INT8_CHECKS[key] for key in ("images", "top1", "peak", "correlation")}
    assert report["accuracy"] == {"fp32": 0.9, "int8": 0.89} and report["speedup_at_export"] == 2.5
    assert [t["batch_size"] for t in report["timings"]] == [1, 2]
    for timing in report["timings"]:
        assert timing["rounds"] >= 3 and timing["int8_over_fp32"] > 0


def test_only_an_int8_export_with_its_checks_is_accepted(tiny_model, tmp_path) -> None:
    with pytest.raises(ValueError, match="is a fp32 model"):
        int8_verification(tiny_model)
    unchecked = save_model(tmp_path / "unchecked.onnx", precision="int8")
    with pytest.raises(ValueError, match="records no int8 checks"):
        int8_verification(unchecked)


def test_forward_changes_nothing_and_a_step_trains_only_the_stream() -> None:
    torch.manual_seed(0)
    model = CAStreamNet(ModelConfig("resnet18", 4))
    images, labels = torch.randn(2, 3, 64, 64), torch.tensor([0, 3])  # every tap has several positions
    context = TrainingContext(device=torch.device("cpu"), precision="fp32", progress=False)
    forward, train_step = steps(model, context, images, labels)
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}  # weights and BatchNorm buffers
    stream = {k: v.clone() for k, v in model.stream.state_dict().items()}
    forward()
    assert all(torch.equal(v, model.stream.state_dict()[k]) for k, v in stream.items())
    train_step()
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in backbone.items())
    changed = [k for k, v in stream.items() if not torch.equal(v, model.stream.state_dict()[k])]
    assert "token" in changed and len(changed) == len(stream)


def test_run_reports_both_throughputs_and_their_ratio() -> None:
    result = train_speed("resnet18", image_size=32, batch_size=2, budget_s=0, precision="fp32", num_classes=4)
    assert result["rounds"] == 3 and result["ratio"] > 0 and result["threads"] >= 1
    for step in ("forward", "train"):
        assert result[step]["images_per_second"] == pytest.approx(2 / (result[step]["p50_ms"] / 1000))
    with pytest.raises(ValueError, match="batch_size"):
        train_speed("resnet18", batch_size=0)


def test_the_baseline_graph_lacks_only_the_class_maps_output(tiny_model: Path) -> None:
    proto = onnx.load(str(tiny_model))
    plain = speed.without_class_maps(proto)
    assert [o.name for o in plain.graph.output] == ["logits", "attention"]
    assert [o.name for o in proto.graph.output] == ["logits", "attention", "class_maps"]  # left as it was


def test_each_side_fetches_what_it_says(tiny_model: Path) -> None:
    session = make_session(onnx.load(str(tiny_model)))
    images = np.zeros((2, 3, 32, 32), np.float32)
    unfetched = speed.Fetching(session, ["logits", "attention"]).run(None, {"image": images})
    fetched = speed.Fetching(session, ["logits", "attention", "class_maps"]).run(None, {"image": images})
    assert [a.shape for a in unfetched] == [(2, 4), (2, 4, 4)]
    assert fetched[2].shape == (2, 4, 4, 4)


def test_class_map_cost_times_the_three_ways_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speed, "CLASS_MAP_MODELS", (("resnet18", 32, 4),))
    result = speed.class_map_cost(batch_sizes=(1, 2), budget_s=0.0)
    [model] = result["models"]
    assert [row["batch_size"] for row in model["batches"]] == [1, 2]
    for row in model["batches"]:
        assert row["rounds"] >= 3 and set(row["ms"]) == {"without", "unfetched", "fetched"}
        assert row["unfetched_over_without"] > 0 and row["fetched_over_unfetched"] > 0
    lines = speed.SECTIONS[2].render(result, {})
    assert "| resnet18 32 px, 4 classes | 2 |" in "\n".join(lines)
