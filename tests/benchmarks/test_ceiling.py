"""The ceiling section: the null model is served as its reference would be, the service's CPU is counted over its
process tree, and the quick run reports every concurrency, the stages and one serving process against two."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from benchmarks.ceiling import SECTIONS, ceiling, cpu_seconds, tree_cpu_seconds
from benchmarks.nullmodel import null_model, save_null_model
from service.model import load_model
from tests.service.servicetools import CLASSES, PREPROCESSING


def test_null_model_has_the_reference_contract_and_consistent_outputs(tiny_model, tmp_path) -> None:
    reference = onnx.load(str(tiny_model))
    null = null_model(tiny_model)
    props = {p.key: p.value for p in null.metadata_props}
    assert props == {p.key: p.value for p in reference.metadata_props} | {"model_name": "tiny-ca-null"}
    assert [o.name for o in null.graph.output] == [o.name for o in reference.graph.output]
    assert len(null.graph.node) < len(reference.graph.node) + 4  # a handful of cheap operators

    model = load_model(save_null_model(tiny_model, tmp_path / "null.onnx"), ["cpu"])
    model.warm_up([1, 3])  # the service's own checks against the metadata
    crop = PREPROCESSING["crop"]
    images = np.random.default_rng(0).random((3, 3, crop, crop), np.float32)
    outputs = model.run(images, class_maps=True)
    assert len(outputs) == 3 and model.attention_shape == (4, 4)
    for image, output in zip(images, outputs, strict=True):
        assert output.logits.shape == (len(CLASSES),) and output.attention.shape == (4, 4)
        assert output.attention.min() >= 0 and output.attention.sum() == pytest.approx(1, abs=1e-6)
        assert output.class_maps.shape == (len(CLASSES), 4, 4)
        np.testing.assert_allclose(output.class_maps.sum(axis=(1, 2)), output.logits, atol=1e-6)
        assert output.logits[-1] == pytest.approx(image[0, 0, 0])  # the logits follow the input


def test_null_model_of_a_gap_reference_has_logits_only(tmp_path) -> None:
    from tests.service.servicetools import save_model

    gap = save_model(tmp_path / "gap.onnx", kind="gap")
    null = null_model(gap)
    assert [o.name for o in null.graph.output] == ["logits"]
    assert json.loads({p.key: p.value for p in null.metadata_props}["classes"]) == CLASSES


def test_tree_cpu_counts_the_process_and_its_children() -> None:
    busy = "import sys\nwhile sys.stdin.read(1): pass\nx = 0\nfor i in range(3_000_000): x += i"
    child = subprocess.Popen([sys.executable, "-c", busy], stdin=subprocess.PIPE)
    try:
        assert tree_cpu_seconds(os.getpid()) >= tree_cpu_seconds(child.pid) >= 0
    finally:
        child.communicate(b"")  # stdin closed: the child does its work and exits
    before = tree_cpu_seconds(os.getpid())
    subprocess.run([sys.executable, "-c", busy], input=b"", check=True)  # reaped: counted in our children's time
    assert tree_cpu_seconds(os.getpid()) > before
    assert tree_cpu_seconds(2**22 + 1) == 0 and cpu_seconds(2**22 + 1) == 0  # no such process


def test_quick_ceiling_reports_each_concurrency_stages_and_workers(tiny_model) -> None:
    section = SECTIONS[0]
    result = ceiling(tiny_model, **section.quick, images=4)
    assert set(result["levels"]) == {"1", "8", "32"}
    for level in result["levels"].values():
        assert set(level["statuses"]) == {"200"} and level["requests"] > 0 and level["requests_per_second"] > 0
        assert 0 < level["cpu_ms_per_request"] < 1000 and 0 < level["p50_ms"] <= level["p99_ms"]
        stages = level["stages_ms"]
        assert stages["decode"] > 0 and stages["inference"] > 0 and stages["request"] > stages["decode"]
    assert result["cpu_ms_per_request"] == max(level["cpu_ms_per_request"] for level in result["levels"].values())
    workers = result["workers"]
    for n in ("1", "2"):
        assert workers[n]["requests_per_second"] > 0 and workers[n]["ok_share"] == 1
    assert workers["1"]["processes"] == 1 and workers["2"]["processes"] >= 3  # a supervising parent and two workers
    assert workers["ratio"] == pytest.approx(workers["2"]["requests_per_second"] / workers["1"]["requests_per_second"])
    text = "\n".join(section.render(result, {"machine": {"usable_cores": 2}}))
    assert "| concurrency | requests/s |" in text and "| 32 | " in text and "two / one = **" in text
    aims = section.aims(result)
    assert len(aims) == 2 and all(aim.met in (True, False) for aim in aims)
