"""A real Prometheus scraping the running container with deploy/prometheus/prometheus.yml and its rules: every query of
the Grafana dashboard and the autoscaler's metric return data after traffic, and the rules evaluate."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
import yaml

from service.contract import FIGURES
from tests.deploy.containertools import Container, prometheus_binary
from tests.deploy.deploytools import ADAPTER_VALUES, DASHBOARD, DEPLOY, REPO, load_yaml
from tests.service.servicetools import free_port

pytestmark = pytest.mark.slow

# What Prometheus' Kubernetes pod discovery would attach, so the adapter's rule finds its series here too.
POD_LABELS = {"namespace": "castream-test", "pod": "castream-test-0"}
# Grafana's $__rate_interval is at least four scrape intervals (5 s here); a minute covers the traffic below.
RATE_INTERVAL = "1m"
EXAMPLE = (REPO / "docs" / "images" / "example.png").read_bytes()


def query(url: str, expr: str) -> list[dict]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def wait_for(url: str, expr: str, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while not (result := query(url, expr)):
        assert time.monotonic() < deadline, f"no data for {expr} after {timeout} s"
        time.sleep(1)
    return result


@pytest.fixture(scope="module")
def prometheus(served: Container, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prometheus on this machine with a copy of deploy/prometheus/prometheus.yml whose target is the container on
    the host network (compose reaches it as castream:8000), and its rules beside it, as compose mounts them."""
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    (job,) = config["scrape_configs"]
    (static,) = job["static_configs"]
    static["targets"] = [f"127.0.0.1:{served.port}"]
    static["labels"] = POD_LABELS
    folder = tmp_path_factory.mktemp("prometheus")
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    for rules in config["rule_files"]:
        shutil.copy(DEPLOY / "prometheus" / rules, folder / rules)
    port = free_port()
    command = [
        prometheus_binary(),
        f"--config.file={folder / 'prometheus.yml'}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.path={folder / 'data'}",
    ]
    with (folder / "prometheus.log").open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (folder / "prometheus.log").read_text()
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (folder / "prometheus.log").read_text()
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture(scope="module")
def traffic(served: Container, prometheus: str) -> str:
    """Three scrape intervals of classified images and refused requests, as the dashboard's rates need."""
    served.wait_ready()
    wait_for(prometheus, 'up{job="castream"} == 1')
    for _ in range(3):
        for top_k in ("1", "3", "5"):
            response = httpx.post(f"{served.url}/classify", files=[("file", ("example.png", EXAMPLE))],
                                  params={"top_k": top_k}, timeout=30)  # fmt: skip
            assert response.status_code == 200, response.text
        refused = httpx.post(f"{served.url}/classify", content=b"x", headers={"content-type": "text/plain"})
        assert refused.status_code == 415
        time.sleep(5.5)
    return prometheus


def test_prometheus_scrapes_the_container(traffic: str) -> None:
    (up,) = query(traffic, 'up{job="castream"}')
    assert up["value"][1] == "1" and up["metric"]["instance"].startswith("127.0.0.1:")
    (samples,) = query(traffic, 'scrape_samples_scraped{job="castream"}')
    assert float(samples["value"][1]) > 100
    (memory,) = query(traffic, 'process_resident_memory_bytes{job="castream"}')
    assert 10 * 2**20 < float(memory["value"][1]) < 4 * 2**30


def test_every_dashboard_query_returns_data(traffic: str) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    empty = []
    for expr in exprs:
        try:
            wait_for(traffic, expr.replace("$__rate_interval", RATE_INTERVAL), timeout=15)
        except AssertionError:
            empty.append(expr)
    assert empty == []
    (images,) = query(traffic, f"sum(increase(castream_images_classified_total[{RATE_INTERVAL}]))")
    assert float(images["value"][1]) > 0, "the traffic shows in the rates"


def test_the_autoscaler_metric_exists(traffic: str) -> None:
    (rule,) = load_yaml(ADAPTER_VALUES)["rules"]["custom"]
    response = httpx.get(f"{traffic}/api/v1/series", params={"match[]": rule["seriesQuery"]}, timeout=10)
    (series,) = response.json()["data"]
    assert {k: series[k] for k in POD_LABELS} == POD_LABELS
    # The adapter fills the template with the HPA's pods; this is its query for the test's one pod.
    matchers = ",".join(f'{label}="{value}"' for label, value in POD_LABELS.items())
    expr = rule["metricsQuery"].replace("<<.Series>>", series["__name__"]).replace("<<.LabelMatchers>>", matchers)
    expr = expr.replace("<<.GroupBy>>", "pod")
    (value,) = query(traffic, expr)
    assert value["metric"]["pod"] == POD_LABELS["pod"] and float(value["value"][1]) >= 0
    hpa = load_yaml(DEPLOY / "k8s" / "cpu" / "hpa.yaml")
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == rule["name"]["as"] == series["__name__"]


def test_the_rules_evaluate_and_record_each_figures_live_median(traffic: str) -> None:
    deadline = time.monotonic() + 45  # the rules run every evaluation_interval (15 s)
    while True:
        groups = httpx.get(f"{traffic}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if rules and all(rule["health"] == "ok" for rule in rules):
            break
        assert time.monotonic() < deadline, rules
        time.sleep(1)
    assert "CastreamExplanationDrift" in {rule["name"] for rule in rules}
    medians = wait_for(traffic, "model:castream_explanation:median10m", timeout=30)
    assert {median["metric"]["figure"] for median in medians} == set(FIGURES)
    assert all(0 <= float(median["value"][1]) <= 1 for median in medians)
