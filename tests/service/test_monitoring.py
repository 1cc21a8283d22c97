"""The monitored figures: their values on known maps, their histograms for every image the service classifies
(either API, whatever the request asks for), the band the model file records as gauges, and a GAP model's top-1
probability alone."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.contract import FIGURES, MONITORING_KEY, figures_of
from service.metadata import ModelError, parse_metadata
from service.metrics import Metrics
from service.model import load_model
from service.monitoring import Monitor, watch
from tests.service.servicetools import COLOURS, MONITORING, build_model, save_model, solid_png, tiny_inputs

ENTROPY, PEAK, TOP1 = FIGURES


def maps(height: int, width: int) -> np.ndarray:
    """Two attention maps [2, h, w]: uniform, then all the weight on one position."""
    uniform = np.full((height, width), 1 / (height * width), np.float32)
    one_hot = np.zeros((height, width), np.float32)
    one_hot[height // 2, width - 1] = 1
    return np.stack([uniform, one_hot])


LOGITS = np.array([[0, 0, 0, 0], [np.log(3), 0, 0, 0]], np.float32)  # top-1 probabilities 1/4 and 3/6


@pytest.mark.parametrize("grid", [(4, 4), (7, 7), (14, 14), (2, 3)])
def test_a_uniform_map_has_entropy_1_and_peak_1_over_p_a_one_hot_one_entropy_0_and_peak_1(grid) -> None:
    found = figures_of(LOGITS, maps(*grid))
    assert list(found) == list(FIGURES) and all(values.shape == (2,) for values in found.values())
    np.testing.assert_allclose(found[ENTROPY], [1, 0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(found[PEAK], [1 / (grid[0] * grid[1]), 1], rtol=1e-6)
    np.testing.assert_allclose(found[TOP1], [0.25, 0.5], rtol=1e-6)
    assert found[ENTROPY].max() <= 1, "rounding never takes a uniform map's entropy past 1"


def test_without_attention_only_the_top1_probability_is_computed() -> None:
    assert list(figures_of(LOGITS)) == [TOP1]
    spread = np.random.default_rng(0).dirichlet(np.ones(49), 64).reshape(64, 7, 7).astype(np.float32)
    found = figures_of(np.random.default_rng(1).normal(size=(64, 10)).astype(np.float32), spread)
    assert all(((0 <= values) & (values <= 1)).all() for values in found.values())
    assert (found[PEAK] >= 1 / 49).all() and (found[ENTROPY] < 1).all()


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_a_batch_observes_each_images_figures_under_the_models_name(model_path: Path) -> None:
    metrics = Metrics()
    Monitor(metrics, load_model(model_path, ["cpu"]))({"logits": LOGITS, "attention": maps(4, 4)})
    for name, total in ((ENTROPY, 1), (PEAK, 1 / 16 + 1), (TOP1, 0.75)):
        assert sample(metrics, f"castream_{name}_count", model="tiny-ca") == 2
        assert sample(metrics, f"castream_{name}_sum", model="tiny-ca") == pytest.approx(total, abs=1e-6)
    assert sample(metrics, f"castream_{ENTROPY}_bucket", model="tiny-ca", le="0.01") == 1  # the one-hot map
    assert sample(metrics, f"castream_{PEAK}_bucket", model="tiny-ca", le="0.1") == 1  # the uniform one, 1/16
    assert sample(metrics, f"castream_{TOP1}_bucket", model="tiny-ca", le="0.25") == 1


def test_padded_batches_count_only_their_images(model_path: Path) -> None:
    metrics, model = Metrics(), load_model(model_path, ["cpu"])
    model.buckets = (4,)  # as on CUDA: one image runs in a batch of 4, padded with zeros
    watch(metrics, model)
    (output,) = model.run(tiny_inputs(solid_png(COLOURS["red"])), {"logits"})
    assert list(output) == ["logits"]  # the monitor's attention is fetched, not returned
    assert [sample(metrics, f"castream_{name}_count", model="tiny-ca") for name in FIGURES] == [1, 1, 1]


def families(client: TestClient) -> dict[tuple[str, tuple], float]:
    """``{(sample, label items): value}`` of ``GET /metrics``."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for sample in family.samples
    }


def observed(metrics: dict[tuple[str, tuple], float], figure: str, model: str, part: str = "count") -> float | None:
    return metrics.get((f"castream_{figure}_{part}", (("model", model),)))


def reference(metrics: dict[tuple[str, tuple], float], model: str) -> dict[str, list[float]]:
    """The recorded quantiles as the gauges report them: ``{figure: [value at each quantile, in order]}``."""
    found: dict[str, dict[float, float]] = {}
    for (name, labels), value in metrics.items():
        if name == "castream_explanation_reference" and dict(labels)["model"] == model:
            found.setdefault(dict(labels)["figure"], {})[float(dict(labels)["quantile"])] = value
    return {figure: [values[q] for q in sorted(values)] for figure, values in found.items()}


def test_every_classified_image_is_observed_whatever_its_request_asks_for(client: TestClient) -> None:
    before = families(client)
    assert [observed(before, figure, "tiny-ca") for figure in FIGURES] == [0, 0, 0]  # warm-up is not traffic
    images = [solid_png(COLOURS[colour]) for colour in ("red", "green", "blue")]
    files = [("file", (f"{i}.png", image, "image/png")) for i, image in enumerate(images)]
    plain = client.post("/classify", files=files, params={"attention": "none"})
    assert plain.status_code == 200 and all(p["attention"] is None for p in plain.json()["predictions"])
    tensor = tiny_inputs(images[0])
    only_maps = {
        "inputs": [{"name": "image", "datatype": "FP32", "shape": list(tensor.shape), "data": tensor.ravel().tolist()}],
        "outputs": [{"name": "class_maps"}],
    }
    answer = client.post("/v2/models/tiny-ca/infer", json=only_maps)
    assert answer.status_code == 200 and [o["name"] for o in answer.json()["outputs"]] == ["class_maps"]
    encoded = {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                           "data": [base64.b64encode(images[1]).decode()]}]}  # fmt: skip
    assert client.post("/v2/models/tiny-ca/infer", json=encoded).status_code == 200
    after = families(client)
    assert [observed(after, figure, "tiny-ca") for figure in FIGURES] == [5, 5, 5]
    # A one-colour image draws the tiny model's attention evenly over its 4 x 4 grid.
    assert observed(after, ENTROPY, "tiny-ca", "sum") == pytest.approx(5, abs=1e-5)
    assert observed(after, PEAK, "tiny-ca", "sum") == pytest.approx(5 / 16, abs=1e-6)
    assert reference(after, "tiny-ca") == MONITORING["figures"]


def test_a_gap_model_reports_its_top1_probability_only(app_client, gap_model_path: Path) -> None:
    client = app_client(gap_model_path)
    response = client.post("/classify", files=[("file", ("red.png", solid_png(COLOURS["red"]), "image/png"))])
    assert response.status_code == 200
    metrics = families(client)
    assert observed(metrics, TOP1, "tiny-gap") == 1
    assert not any(name.startswith(("castream_attention_entropy", "castream_attention_peak")) for name, _ in metrics)
    assert reference(metrics, "tiny-gap") == {TOP1: MONITORING["figures"][TOP1]}


def test_a_file_without_recorded_quantiles_is_watched_without_a_band(app_client, tmp_path: Path) -> None:
    client = app_client(save_model(tmp_path / "older.onnx", monitoring=None))
    response = client.post("/classify", files=[("file", ("red.png", solid_png(COLOURS["red"]), "image/png"))])
    assert response.status_code == 200
    metrics = families(client)
    assert [observed(metrics, figure, "tiny-ca") for figure in FIGURES] == [1, 1, 1]
    assert reference(metrics, "tiny-ca") == {}


@pytest.mark.parametrize(
    "recorded, complaint",
    [
        ({**MONITORING, "figures": {"attention_sharpness": [0.1, 0.2, 0.3, 0.4, 0.5]}}, "unknown figures"),
        ({**MONITORING, "figures": {TOP1: [0.9, 0.8, 0.7, 0.6, 0.5]}}, "ascending"),
        ({**MONITORING, "figures": {TOP1: [0.1, 0.2]}}, "must be 5 values"),
        ({**MONITORING, "quantiles": [0.5, 1.5]}, "quantiles"),
        ({"images": 64}, "expected"),
    ],
)
def test_a_malformed_record_is_refused_naming_the_property(recorded: dict, complaint: str) -> None:
    props = {prop.key: prop.value for prop in build_model(monitoring=json.dumps(recorded)).metadata_props}
    with pytest.raises(ModelError, match=f"'{MONITORING_KEY}' is invalid: .*{complaint}"):
        parse_metadata(props, "tiny.onnx")
