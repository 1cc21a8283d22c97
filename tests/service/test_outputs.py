"""The model's outputs as data: the contract's table, the docs' copy of it, and the service reading a file's outputs
from its graph (listings, exact fetches, refusals) for CA, GAP and older files."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.contract import DIMS, OUTPUT_NAMES, OUTPUTS, POOLINGS, output_names, output_spec, outputs_of
from service.errors import ServiceError
from service.metadata import ModelError
from service.model import ImageOutput, load_model
from tests.service.servicetools import CLASSES, COLOURS, REPO, save_model, solid_png

DOCS = REPO / "docs" / "onnx-model.md"
BEGIN, END = "<!-- outputs: generated from OUTPUTS in service/contract.py -->", "<!-- end of outputs -->"


def _yes(value: bool, yes: str, no: str) -> str:
    return yes if value else no


def outputs_markdown() -> str:
    """The docs' tables of dimensions and outputs, as the contract's table gives them."""
    lines = ["| dimension | size |", "|---|---|"]
    lines += [f"| `{symbol}` | {meaning} |" for symbol, meaning in DIMS.items()]
    lines += [
        "",
        "| output | shape | type | poolings | in older files | in int8 | export tolerance (fp32, fp16) | computed | "
        "meaning |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for spec in OUTPUTS:
        tolerance = spec.tolerance
        lines.append(
            f"| `{spec.name}` | `[{', '.join(spec.shape)}]` | {spec.dtype} | {', '.join(spec.poolings)} | "
            f"{_yes(spec.optional, 'may be missing', 'always there')} | "
            f"{_yes(spec.float_in_int8, 'float32', 'may be quantised')} | "
            f"{tolerance.fp32:g}, {tolerance.fp16:g} of {tolerance.words} | "
            f"{_yes(spec.on_request, 'when asked', 'always')} | {spec.meaning} |"
        )
    return "\n".join(lines)


def test_the_docs_show_the_contracts_table_of_outputs() -> None:
    text = DOCS.read_text()
    found = re.search(rf"{re.escape(BEGIN)}\n(.*?)\n{re.escape(END)}", text, re.DOTALL)
    assert found, f"docs/onnx-model.md lacks the block between {BEGIN!r} and {END!r}"
    assert found.group(1) == outputs_markdown(), f"docs/onnx-model.md should read:\n{outputs_markdown()}"


def test_the_table_is_consistent() -> None:
    assert len(set(OUTPUT_NAMES)) == len(OUTPUTS)
    for spec in OUTPUTS:
        assert spec.shape[0] == "N" and set(spec.shape) <= set(DIMS), spec.name
        assert set(spec.poolings) <= set(POOLINGS) and spec.poolings, spec.name
        assert spec.tolerance.scale in OUTPUT_NAMES and 0 < spec.tolerance.fp32 <= spec.tolerance.fp16, spec.name
        assert output_spec(spec.name) is spec
    for pooling in POOLINGS:
        assert output_names(pooling) == tuple(spec.name for spec in outputs_of(pooling))
        for spec in outputs_of(pooling):  # each output's scale is an output of the same graph
            assert spec.tolerance.scale in output_names(pooling)
    with pytest.raises(ValueError, match="unknown output 'scores'"):
        output_spec("scores")
    with pytest.raises(ValueError, match="unknown pooling"):
        outputs_of("max")


def _listed(client: TestClient, name: str) -> tuple[list[str], list[str]]:
    """The outputs /v2's model metadata and /v1/model list, by name."""
    v2 = [o["name"] for o in client.get(f"/v2/models/{name}").json()["outputs"]]
    v1 = [o["name"] for o in client.get("/v1/model").json()["outputs"]]
    return v2, v1


@pytest.mark.parametrize("pooling", POOLINGS)
def test_v2_and_v1_list_exactly_the_tables_outputs(app_client, tmp_path: Path, pooling: str) -> None:
    client = app_client(save_model(tmp_path / f"{pooling}.onnx", pooling, class_maps=True, embedding=True))
    v2, v1 = _listed(client, f"tiny-{pooling}")
    assert v2 == v1 == list(output_names(pooling))
    described = client.get("/v1/model").json()
    sizes = {"N": None, "classes": len(CLASSES), "h": 4, "w": 4, "width": 3}
    for entry in described["outputs"]:
        spec = output_spec(entry["name"])
        assert entry["shape"] == [sizes[symbol] for symbol in spec.shape]
        assert (entry["dtype"], entry["on_request"]) == (spec.dtype, spec.on_request)
    assert described["class_maps"] is True and (described["attention"] is None) is (pooling == "gap")


def test_a_file_without_an_optional_output_lists_and_serves_the_rest(app_client, tmp_path: Path) -> None:
    client = app_client(save_model(tmp_path / "older.onnx", class_maps=False))
    v2, v1 = _listed(client, "tiny-ca")
    assert v2 == v1 == [name for name in output_names("ca") if not output_spec(name).optional]


class Recorder:
    """A session that records the outputs each run fetches."""

    def __init__(self, session: object):
        self.session, self.fetched = session, []

    def run(self, outputs: list[str], feeds: dict) -> list[np.ndarray]:
        self.fetched.append(list(outputs))
        return self.session.run(outputs, feeds)

    def __getattr__(self, name: str) -> object:
        return getattr(self.session, name)


def test_a_run_fetches_exactly_the_outputs_named_and_gives_one_record_per_image(model_path: Path) -> None:
    model = load_model(model_path, ["cpu"])
    model.warm_up([1])
    model.session = recorder = Recorder(model.session)
    images = np.random.default_rng(0).random((3, 3, 32, 32), np.float32)
    everything = model.run(images, set(OUTPUT_NAMES) & set(model.outputs))
    only_maps = model.run(images, {"class_maps"})
    defaults = model.run(images)
    assert recorder.fetched == [["logits", "attention", "class_maps"], ["class_maps"], ["logits", "attention"]]
    assert all(isinstance(o, ImageOutput) for o in everything) and len(everything) == len(only_maps) == 3
    for image, full, maps, plain in zip(images, everything, only_maps, defaults, strict=True):
        assert list(full) == ["logits", "attention", "class_maps"] and list(maps) == ["class_maps"]
        (alone,) = recorder.session.run(["logits"], {"image": image[None]})  # in order: each image its own
        np.testing.assert_allclose(full["logits"], alone[0], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(maps["class_maps"], full["class_maps"])
        np.testing.assert_array_equal(plain["logits"], full["logits"])
        assert full.attention is full["attention"] and plain.class_maps is None  # by name, as attributes too
    with pytest.raises(ModelError, match="has no 'scores' output"):
        model.run(images, {"scores"})


def test_what_a_model_has_is_read_from_its_graph(tmp_path: Path) -> None:
    gap = load_model(save_model(tmp_path / "gap.onnx", "gap", class_maps=True, embedding=True), ["cpu"])
    older = load_model(save_model(tmp_path / "older.onnx", class_maps=False), ["cpu"])
    assert gap.outputs == output_names("gap") and not gap.has_attention and gap.attention_shape is None
    assert older.has_attention and not older.has_class_maps
    assert "it pools with GAP" in gap.lacks("attention") and gap.lacks("logits") is None
    assert "re-export it" in older.lacks("class_maps") and older.lacks("scores") == "unknown output 'scores'"
    with pytest.raises(ServiceError) as refused:
        older.require(["logits", "class_maps"])
    assert (refused.value.status, refused.value.code) == (422, "no_class_maps")


def test_v2_infer_answers_what_it_is_asked_for_and_runs_what_the_monitor_reads_too(client: TestClient) -> None:
    model = client.app.state.lifecycle.serving.model
    model.session = recorder = Recorder(model.session)
    image = base64.b64encode(solid_png(COLOURS["green"])).decode()
    body = {
        "inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": [image]}],
        "outputs": [{"name": "class_maps"}],
    }
    response = client.post("/v2/models/tiny-ca/infer", json=body)
    assert response.status_code == 200 and [o["name"] for o in response.json()["outputs"]] == ["class_maps"]
    assert recorder.fetched == [["logits", "attention", "class_maps"]]  # the monitored figures need the first two


def test_a_batch_beside_another_runs_on_the_shared_session_and_gets_the_same_answers(model_path: Path) -> None:
    model = load_model(model_path, ["cpu"], intra_threads=2)
    model.share(load_model(model_path, ["cpu"], intra_threads=1).session)
    model.warm_up([1, 3])
    model.session = whole = Recorder(model.session)
    model.share(shared := Recorder(model._shared))
    images = np.random.default_rng(1).random((3, 3, 32, 32), np.float32)
    alone, beside = model.run(images, class_maps=True), model.run(images, class_maps=True, shared=True)
    assert len(whole.fetched) == len(shared.fetched) == 1  # each run on its own session
    for one, other in zip(alone, beside, strict=True):
        assert list(one) == list(other) == ["logits", "attention", "class_maps"]
        for name in one:
            np.testing.assert_allclose(other[name], one[name], rtol=1e-5, atol=1e-6)
