"""Everything the deployment files tell the service is something the service knows: settings, routes, metrics."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.contract import FIGURES
from service.settings import PREFIX, load_settings
from tests.deploy.deploytools import (
    ADAPTER_VALUES,
    COMPOSE,
    COMPOSE_GPU,
    DASHBOARD,
    DEPLOY,
    DOCKERFILES,
    SETTING_NAMES,
    Exposition,
    all_manifest_files,
    compose_service,
    container_env,
    image_env,
    load_yaml,
    manifests,
    query_problems,
)

DEPLOYMENT_FILES = [COMPOSE, COMPOSE_GPU, *DOCKERFILES.values(), *all_manifest_files(), ADAPTER_VALUES]


def effective_environments() -> dict[str, dict[str, str]]:
    """The CASTREAM_* environment each way of running sees: the image's ENV, then what compose or the pod sets."""
    found = {}
    for variant in ("cpu", "gpu"):
        service = compose_service(variant)
        found[f"compose-{variant}"] = {
            **image_env(DOCKERFILES[variant], service["build"]["target"]),
            **service["environment"],
        }
        pod_env = container_env(manifests(variant)["Deployment"]["spec"]["template"]["spec"]["containers"][0])
        found[f"k8s-{variant}"] = {**image_env(DOCKERFILES[variant], "bundled"), **pod_env}
    return {name: {k: str(v) for k, v in env.items() if k.startswith(PREFIX)} for name, env in found.items()}


@pytest.mark.parametrize("path", DEPLOYMENT_FILES, ids=lambda p: p.name)
def test_every_castream_variable_is_a_setting(path: Path) -> None:
    named = set(re.findall(r"\bCASTREAM_[A-Z0-9_]+", path.read_text()))
    assert named - SETTING_NAMES == set(), f"{path.name} names variables the service does not read"


@pytest.mark.parametrize("target", list(effective_environments()))
def test_settings_are_accepted_by_the_service(target: str, monkeypatch: pytest.MonkeyPatch, model_path: Path) -> None:
    for name in [n for n in os.environ if n.startswith(PREFIX)]:
        monkeypatch.delenv(name)
    env = effective_environments()[target]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(model_path=model_path)  # the model file itself only exists inside the image
    assert settings.host == "0.0.0.0", "inside a container the service must listen on every interface"
    assert str(settings.port) == env["CASTREAM_PORT"]
    assert settings.model_path == model_path and Path(env["CASTREAM_MODEL_PATH"]).is_absolute()


def test_probe_and_scrape_paths_answer_on_the_app(app_client: Callable[..., TestClient]) -> None:
    healthcheck = (DEPLOY / "healthcheck.py").read_text()
    used = set(re.findall(r"/(?:healthz|readyz|metrics)\b", healthcheck))
    for variant in ("cpu", "gpu"):
        pod = manifests(variant)["Deployment"]["spec"]["template"]
        main = pod["spec"]["containers"][0]
        used |= {main[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}
        used.add(pod["metadata"]["annotations"]["prometheus.io/path"])
    prometheus = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    used |= {job["metrics_path"] for job in prometheus["scrape_configs"]}
    assert used == {"/healthz", "/readyz", "/metrics"}
    client = app_client()
    assert {path: client.get(path).status_code for path in used} == dict.fromkeys(used, 200)
    assert client.get("/ready").status_code == 404  # a misspelt probe path would fail, not pass


def test_dashboard_queries_name_only_exported_metrics(live_metrics: Exposition) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) >= 10
    problems = {expr: query_problems(expr, live_metrics) for expr in exprs}
    assert {expr: found for expr, found in problems.items() if found} == {}


def test_the_name_check_catches_a_wrong_query(live_metrics: Exposition) -> None:
    assert query_problems("sum(rate(castream_request_total[5m]))", live_metrics)  # missing _s
    assert query_problems('sum by (status) (rate(castream_requests_total{route="/clasify"}[5m]))', live_metrics)
    assert query_problems("sum by (reason) (rate(castream_requests_total[5m]))", live_metrics)
    assert query_problems("up", live_metrics)
    assert not query_problems("sum(castream_queue_depth)", live_metrics)


def test_process_and_python_series_are_exported(live_metrics: Exposition) -> None:
    standard = {"process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds", "process_max_fds",
                "python_gc_objects_collected_total", "python_gc_collections_total", "python_info"}  # fmt: skip
    assert standard - set(live_metrics.labels) == set()
    assert query_problems("max by (instance) (process_resident_memory_bytes and on (instance) castream_ready)",
                          live_metrics) == []  # fmt: skip
    assert query_problems("sum(process_resident_memory_bytes) and on (pod) castream_ready", live_metrics)


def test_autoscaling_series_is_exported(live_metrics: Exposition) -> None:
    for rule in load_yaml(ADAPTER_VALUES)["rules"]["custom"]:
        metric = rule["seriesQuery"].split("{")[0]
        assert metric in live_metrics.labels
        # namespace and pod come from Prometheus' pod discovery, never from the service itself.
        assert not {"namespace", "pod"} & live_metrics.labels[metric]


def test_dashboard_shows_what_operators_need() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = " ".join(target["expr"] for panel in dashboard["panels"] for target in panel["targets"])
    needed = {
        "request rate by status": r"sum by \(status\) \(rate\(castream_requests_total",
        "p50 latency": r"histogram_quantile\(0\.5, [^\n]*castream_request_duration_seconds_bucket",
        "p99 latency": r"histogram_quantile\(0\.99, [^\n]*castream_request_duration_seconds_bucket",
        "queue wait": r"castream_queue_wait_seconds_bucket",
        "batch size distribution": r"sum by \(le\) \(increase\(castream_batch_size_images_bucket",
        "queue depth": r"castream_queue_depth",
        "rejections": r"sum by \(reason\) \(rate\(castream_rejections_total",
        "images per second": r"rate\(castream_images_classified_total",
        "memory per replica": r"max by \(instance\) \(process_resident_memory_bytes",
        **{
            f"live {figure} median": rf"histogram_quantile\(0\.5, sum by \(model, le\) \(rate\(castream_{figure}_bucket"
            for figure in FIGURES
        },
        "recorded band": r"castream_explanation_reference\{figure=",
    }
    assert [name for name, pattern in needed.items() if not re.search(pattern, exprs)] == []


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert panel["targets"] and len(refs) == len(set(refs)), panel["title"]
        for source in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert source == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
