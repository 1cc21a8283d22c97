"""The class-map cost and explanation-speed benchmarks: what they run and report (not how fast it is)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from benchmarks import class_maps, explain_speed
from export.sessions import make_session
from export.timing import time_sessions


def test_the_baseline_graph_lacks_only_the_class_maps_output(tiny_model: Path) -> None:
    proto = onnx.load(str(tiny_model))
    plain = class_maps.without_class_maps(proto)
    assert [o.name for o in plain.graph.output] == ["logits", "attention"]
    assert [o.name for o in proto.graph.output] == ["logits", "attention", "class_maps"]  # left as it was


def test_each_side_fetches_what_it_says(tiny_model: Path) -> None:
    session = make_session(onnx.load(str(tiny_model)))
    images = np.zeros((2, 3, 32, 32), np.float32)
    unfetched = class_maps.Fetching(session, ["logits", "attention"]).run(None, {"image": images})
    fetched = class_maps.Fetching(session, ["logits", "attention", "class_maps"]).run(None, {"image": images})
    assert [a.shape for a in unfetched] == [(2, 4), (2, 4, 4)]
    assert fetched[2].shape == (2, 4, 4, 4)
    sessions = {name: class_maps.Fetching(session, ["logits"]) for name in ("without", "unfetched", "fetched")}
    row = class_maps.cost(time_sessions(sessions, images, budget_s=0.0, min_rounds=2))
    assert row["batch_size"] == 2 and row["rounds"] == 2 and row["unfetched_over_without"] > 0
    model = {"backbone": "tiny", "image_size": 32, "classes": 4, "batches": [row]}
    lines = class_maps.SECTIONS[0].render({"threads": 1, "models": [model]}, {})
    assert "| tiny 32 px, 4 classes | 2 |" in "\n".join(lines)


@pytest.mark.slow  # exports ResNet-18 and runs Grad-CAM once: ~30 s
def test_explanation_benchmark_reports_ratios_to_castream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(explain_speed.MODELS, "resnet18", (64, 10))
    [result] = explain_speed.run(("resnet18",), ("castream", "gradcam"), images=2, budget_s=0.0, threads=1)
    rows = {row["method"]: row for row in result["rows"]}
    assert rows["castream"]["castream_speedup"] == 1.0 and rows["gradcam"]["images"] == 1
    assert rows["gradcam"]["castream_speedup"] == pytest.approx(
        rows["castream"]["images_per_second"] / rows["gradcam"]["images_per_second"], rel=0.01
    )
    table = "\n".join(explain_speed.SECTIONS[0].render([result], {}))
    assert "| resnet18 64 px | pytorch-grad-cam GradCAM |" in table and "1 (reference)" in table
