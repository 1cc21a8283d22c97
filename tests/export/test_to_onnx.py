"""The exported CA and GAP graphs of the tiny run: outputs, batch behaviour, metadata, refusals."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from export import metadata, pipeline, to_onnx
from export.graph import export_graph
from export.pipeline import ExportOptions, ExportReport, export_checkpoint
from export.samples import load_samples
from export.sessions import make_session, run_batches
from export.verify import SINGLE_IMAGES, VerificationError, check_parity, check_structure, reference_outputs
from service.contract import output_names, outputs_of
from tests.export.conftest import perturbed
from training import checkpoint
from training.checkpoint import Checkpoint


def _session(report: ExportReport):
    return make_session(onnx.load(str(report.path)))


def test_ca_graph_has_logits_attention_class_maps_and_embedding_for_any_batch(
    ca_export: ExportReport, tiny_state: Checkpoint
) -> None:
    session = _session(ca_export)
    assert [o.name for o in session.get_outputs()] == ["logits", "attention", "class_maps", "embedding"]
    images = load_samples(tiny_state, "val", 5).images
    for count in (1, 2, 5):
        logits, attention, maps = session.run(["logits", "attention", "class_maps"], {"image": images[:count]})
        assert maps.shape == (count, len(tiny_state.classes), 2, 2)
        assert logits.shape == (count, len(tiny_state.classes))
        assert attention.shape == (count, 2, 2)  # 64 px / 32
        assert np.isfinite(logits).all()
        assert (attention >= 0).all()
        np.testing.assert_allclose(attention.sum(axis=(1, 2)), 1.0, atol=1e-5)


def test_batch_one_and_batch_eight_give_the_same_per_image_results(
    ca_export: ExportReport, tiny_state: Checkpoint
) -> None:
    session = _session(ca_export)
    images = load_samples(tiny_state, "val", 16).images
    single, batched = run_batches(session, images, 1), run_batches(session, images, 8)
    scale = np.abs(batched["logits"]).max()
    np.testing.assert_allclose(single["logits"], batched["logits"], rtol=0, atol=1e-5 * max(1.0, scale))
    np.testing.assert_allclose(single["attention"], batched["attention"], rtol=0, atol=1e-6)


def test_the_reported_parity_is_what_the_written_file_gives(ca_export: ExportReport, tiny_state: Checkpoint) -> None:
    # Measured again here, on the written file and the export's validation images: the report and the
    # verification record in the file state the differences as they are, at batch one and eight.
    images = load_samples(tiny_state, "val", ExportOptions().verify_images).images
    reference = reference_outputs(tiny_state.build_model(), images, "ca")
    session = make_session(onnx.load(str(ca_export.path)), threads=1)  # as the export checked it
    assert [(p.batch_size, p.images) for p in ca_export.parity] == [(1, SINGLE_IMAGES), (8, len(images))]
    for parity in ca_export.parity:
        outputs = run_batches(session, images[: parity.images], parity.batch_size)
        assert list(parity.errors) == list(output_names("ca"))
        for output, reported in parity.errors.items():
            measured = np.abs(outputs[output] - reference[output][: parity.images]).max()
            assert reported == pytest.approx(measured, rel=1e-3, abs=1e-9), output
        assert parity.scales["logits"] == pytest.approx(np.abs(reference["logits"][: parity.images]).max(), rel=1e-3)
    recorded = metadata.read(ca_export.path)["verification"]["parity"]
    assert recorded == [p.to_dict() for p in ca_export.parity]


def test_batch_axis_is_symbolic_and_shared_by_input_and_outputs(ca_export: ExportReport) -> None:
    graph = onnx.load(str(ca_export.path)).graph
    first_dims = [value.type.tensor_type.shape.dim[0] for value in (*graph.input, *graph.output)]
    assert all(dim.dim_param == "N" and not dim.HasField("dim_value") for dim in first_dims)


def test_a_fixed_batch_axis_is_refused(ca_export: ExportReport, tiny_state: Checkpoint) -> None:
    proto = onnx.load(str(ca_export.path))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 8
    with pytest.raises(VerificationError, match="not symbolic"):
        check_structure(proto, "ca", len(tiny_state.classes), 64)


def test_attention_products_run_as_matmul(ca_export: ExportReport) -> None:
    ops = [node.op_type for node in onnx.load(str(ca_export.path)).graph.node]
    assert "Einsum" not in ops
    assert ops.count("Softmax") == 5  # one per CA block: stem and four stages


def test_metadata_reads_back(ca_export: ExportReport, tiny_state: Checkpoint) -> None:
    props = metadata.read(ca_export.path)
    assert props["castream_format"] == "1"
    assert props["model_name"] == "castream-resnet18-ca"
    assert (props["backbone"], props["pooling"], props["precision"]) == ("resnet18", "ca", "fp32")
    assert props["classes"] == list(tiny_state.classes)
    assert props["preprocessing"] == {
        **tiny_state.preprocessing.to_dict(),
        "layout": "NCHW",
        "dtype": "float32",
        "scale": 1 / 255,
    }
    assert props["dataset"] == tiny_state.data.to_dict()
    assert props["explanation"] == "ca-stream"
    assert float(props["val_top1"]) == tiny_state.metrics["val_top1_ca"]
    assert props["verification"]["tolerance"] == {o.name: o.tolerance.fp32 for o in outputs_of("ca")}


def test_service_accepts_the_metadata(ca_export: ExportReport, tiny_state: Checkpoint) -> None:
    from service.metadata import parse_metadata

    raw = {p.key: p.value for p in onnx.load(str(ca_export.path), load_external_data=False).metadata_props}
    info = parse_metadata(raw, str(ca_export.path))
    assert info.classes == tuple(tiny_state.classes)
    assert info.preprocessing.crop == 64
    assert info.has_attention


def test_gap_graph_has_logits_class_maps_and_embedding(gap_export: ExportReport, tiny_state: Checkpoint) -> None:
    session = _session(gap_export)
    assert [o.name for o in session.get_outputs()] == ["logits", "class_maps", "embedding"]
    logits, maps = session.run(["logits", "class_maps"], {"image": load_samples(tiny_state, "val", 3).images})
    assert logits.shape == (3, len(tiny_state.classes)) and maps.shape == (3, len(tiny_state.classes), 2, 2)
    props = metadata.read(gap_export.path)
    assert (props["pooling"], props["explanation"]) == ("gap", "cam")
    assert float(props["val_top1"]) == tiny_state.metrics["val_top1_gap"]
    assert all("attention" not in p.errors for p in gap_export.parity)


def test_a_broken_export_is_refused_and_nothing_is_written(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(pipeline, "export_graph", perturbed(export_graph))
    out = tmp_path / "broken.onnx"
    with caplog.at_level(logging.ERROR, logger="export.to_onnx"):
        status = to_onnx.main(["--checkpoint", str(tiny_checkpoint), "--out", str(out), "--verify-images", "16"])
    assert status == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []
    message = caplog.records[-1].getMessage()
    assert "export refused, nothing written" in message
    assert "logits differ from PyTorch's by" in message and "allowed 0.0001 of the scale" in message


def test_an_unfinished_run_is_refused_unless_asked(tiny_state: Checkpoint, tmp_path: Path) -> None:
    path = checkpoint.save(replace(tiny_state, stage="stream"), tmp_path / "unfinished.pt")
    with pytest.raises(ValueError, match="--allow-unfinished"):
        export_checkpoint(ExportOptions(checkpoint=str(path), out=str(tmp_path / "m.onnx")))
    assert not (tmp_path / "m.onnx").exists()


def test_cli_reports_a_missing_checkpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "nope.pt"
    with caplog.at_level(logging.ERROR):
        assert to_onnx.main(["--checkpoint", str(missing), "--out", str(tmp_path / "m.onnx")]) == 2
    assert str(missing) in caplog.text and "training.fit" in caplog.text


def test_cli_rejects_int8_with_fp16(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        to_onnx.parse_args(["--int8", "--fp16"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_rounding_level_differences_pass_and_real_errors_are_refused(
    ca_export: ExportReport, tiny_state: Checkpoint
) -> None:
    session = _session(ca_export)
    images = load_samples(tiny_state, "val", 8).images
    reference = reference_outputs(tiny_state.build_model(), images, "ca")
    peak = float(reference["attention"].max())
    # Float32 kernels that add in another order: a few 1e-5 of the largest weight, as seen between CPUs.
    rounding = {**reference, "attention": reference["attention"] + 3e-5 * peak * np.sign(reference["attention"] - 0.1)}
    assert [p.batch_size for p in check_parity(session, rounding, images)] == [1, 8]
    wrong = {
        **reference,
        "attention": reference["attention"] * (1 + 2e-3 * np.cos(np.arange(images.shape[0]))[:, None, None]),
    }
    with pytest.raises(VerificationError, match="of the largest weight"):
        check_parity(session, wrong, images)
