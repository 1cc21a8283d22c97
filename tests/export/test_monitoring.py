"""The validation quantiles of the monitored figures that export records (metadata ``monitoring``): the figures of the
written file on the validation images, read back by the service as the gauges its drift alert compares with."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented
from prometheus_client.parser import text_string_to_metric_families

from export import metadata, monitoring
from export.pipeline import ExportOptions, ExportReport, export_checkpoint
from export.pretrained import ClassifierOptions
from export.samples import load_samples
from service.app import create_app
from service.contract import ATTENTION, FIGURES, LOGITS, MONITORING_KEY, QUANTILES, figures_of
from service.metadata import parse_metadata
from tests.runs import random_weights
from tests.service.servicetools import make_settings, wait_ready
from training.checkpoint import Checkpoint


def recorded(report: ExportReport) -> dict:
    return metadata.read(report.path)[MONITORING_KEY]


@pytest.mark.parametrize("kind", ["ca", "gap"])
def test_the_file_records_the_quantiles_of_its_own_figures_on_the_validation_images(
    kind: str, ca_export: ExportReport, gap_export: ExportReport, tiny_state: Checkpoint
) -> None:
    report = ca_export if kind == "ca" else gap_export
    record = recorded(report)
    images = load_samples(tiny_state, "val", monitoring.IMAGES).images  # the tiny run has fewer than the default
    assert record["images"] == len(images) and record["quantiles"] == list(QUANTILES)
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    names = [LOGITS, ATTENTION] if kind == "ca" else [LOGITS]
    outputs = dict(zip(names, session.run(names, {"image": images}), strict=True))
    expected = figures_of(outputs[LOGITS], outputs.get(ATTENTION))
    assert list(record["figures"]) == (list(FIGURES) if kind == "ca" else ["top1_probability"])
    for name, values in record["figures"].items():
        np.testing.assert_allclose(values, np.quantile(expected[name], QUANTILES), rtol=0, atol=2e-6)


def test_the_service_reads_back_what_export_wrote(ca_export: ExportReport) -> None:
    record = recorded(ca_export)
    props = {p.key: p.value for p in onnx.load(str(ca_export.path), load_external_data=False).metadata_props}
    info = parse_metadata(props, str(ca_export.path))
    assert info.monitoring is not None and info.monitoring.to_dict() == record
    with TestClient(create_app(make_settings(ca_export.path))) as client:
        wait_ready(client)
        text = client.get("/metrics").text
    gauges = {
        (sample.labels["figure"], float(sample.labels["quantile"])): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "castream_explanation_reference" and sample.labels["model"] == info.name
    }
    assert gauges == {
        (name, quantile): value
        for name, values in record["figures"].items()
        for quantile, value in zip(QUANTILES, values, strict=True)
    }


def test_the_attention_costs_one_reshape_beyond_what_the_logits_are_computed_from(ca_export: ExportReport) -> None:
    graph = onnx.load(str(ca_export.path)).graph
    producer = {output: node for node in graph.node for output in node.output}

    def nodes_behind(tensor: str) -> set[str]:
        seen, stack = set(), [tensor]
        while stack:
            node = producer.get(stack.pop())
            if node is not None and node.name not in seen:
                seen.add(node.name)
                stack.extend(node.input)
        return seen

    extra = nodes_behind(ATTENTION) - nodes_behind(LOGITS)
    assert [node.op_type for node in graph.node if node.name in extra] == ["Reshape"]


def test_a_graph_the_cpu_cannot_run_is_written_without_quantiles(
    ca_export: ExportReport, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_kernels(*args, **kwargs):
        raise OrtNotImplemented("Could not find an implementation for Conv(11) node with name ''")

    monkeypatch.setattr(monitoring, "make_session", no_kernels)
    with caplog.at_level(logging.WARNING, logger="export.monitoring"):
        assert monitoring.describe(onnx.load(str(ca_export.path)), np.zeros((2, 3, 64, 64), np.float32)) == {}
    assert "records no validation quantiles" in caplog.text


def test_a_classifier_castream_did_not_train_records_none(tmp_path: Path) -> None:
    """Its validation images are synthetic ones it was only checked on: their figures are no band for its traffic."""
    weights = random_weights("resnet18", tmp_path / "resnet18.pth")
    classifier = ClassifierOptions(weights=str(weights), backbone="resnet18", crop=64)
    options = ExportOptions(classifier=classifier, out=str(tmp_path / "m.onnx"), verify_images=8, cache_dir="")
    report = export_checkpoint(options)
    assert MONITORING_KEY not in report.properties and MONITORING_KEY not in metadata.read(report.path)


def test_the_count_must_be_positive() -> None:
    with pytest.raises(ValueError, match="monitoring_images must be positive, got 0"):
        ExportOptions(monitoring_images=0)
    assert ExportOptions().monitoring_images == monitoring.IMAGES == 512
