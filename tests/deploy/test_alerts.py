"""The drift alert on the served model's explanations (deploy/prometheus/rules.yml): ``promtool test rules`` runs it on
made-up traffic, firing and not; the Prometheus Operator's copy holds the same groups; compose and the config load it;
its expressions name only what the service exports and what the rules record."""

from __future__ import annotations

import copy
import json
import subprocess
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource

from service.metrics import FIGURE_BUCKETS
from tests.deploy.containertools import promtool_binary
from tests.deploy.deploytools import (
    COMPOSE,
    DEPLOY,
    K8S,
    REPO,
    Exposition,
    load_yaml,
    query_problems,
    with_value,
)
from tests.deploy.test_kubernetes import KUBERNETES_VERSIONS

RULES = DEPLOY / "prometheus" / "rules.yml"
PROMETHEUS_RULE = K8S / "prometheus-operator" / "prometheusrule.yaml"
SCHEMA = json.loads((REPO / "tests" / "deploy" / "schemas" / "prometheusrule-v1.schema.json").read_text())
ALERT = "CastreamExplanationDrift"
MINUTES = 60  # of made-up traffic, one sample a minute
# What the model file recorded on its validation images (the shipped model's figures, rounded).
BAND = {
    "attention_entropy": {"0.05": 0.13, "0.25": 0.43, "0.5": 0.65, "0.75": 0.8, "0.95": 0.91},
    "attention_peak": {"0.05": 0.19, "0.25": 0.29, "0.5": 0.41, "0.75": 0.59, "0.95": 0.92},
    "top1_probability": {"0.05": 0.72, "0.25": 0.987, "0.5": 0.9996, "0.75": 1.0, "0.95": 1.0},
}
HEALTHY = {"attention_entropy": 0.62, "attention_peak": 0.42, "top1_probability": 0.9995}


def traffic(model: str, figures: dict[str, float], per_minute: float, instance: str = "a") -> list[dict]:
    """Input series of a replica classifying ``per_minute`` images a minute, each with the figures' given values: every
    bucket of each histogram (as the service exposes them) and its count."""
    series = []
    for figure, value in figures.items():
        name = f"castream_{figure}"
        for bound in [*FIGURE_BUCKETS, "+Inf"]:
            rate = per_minute if bound == "+Inf" or value <= bound else 0
            le = bound if bound == "+Inf" else float(bound)
            series.append({"series": f'{name}_bucket{{model="{model}",instance="{instance}",le="{le}"}}',
                           "values": f"0+{rate}x{MINUTES}"})  # fmt: skip
        series.append({"series": f'{name}_count{{model="{model}",instance="{instance}"}}',
                       "values": f"0+{per_minute}x{MINUTES}"})  # fmt: skip
    return series


def recorded(model: str, figures: tuple[str, ...], instance: str = "a") -> list[dict]:
    """The reference gauges a replica serving ``model`` exposes for ``figures``."""
    series = []
    for figure in figures:
        labels = f'model="{model}",figure="{figure}",instance="{instance}"'
        series += [{"series": f'castream_explanation_reference{{{labels},quantile="{quantile}"}}',
                    "values": f"{value}x{MINUTES}"} for quantile, value in BAND[figure].items()]  # fmt: skip
    return series


def bucket_median(value: float) -> float:
    """``histogram_quantile(0.5, ...)`` of observations all at ``value``: the middle of its bucket."""
    upper = next(bound for bound in FIGURE_BUCKETS if value <= bound)
    lower = max([0.0, *(bound for bound in FIGURE_BUCKETS if bound < upper)])
    return (lower + upper) / 2


def firing(model: str, figure: str, median: float) -> dict:
    """The alert as promtool renders it: its labels, and its annotations with the labels and the median filled in."""
    (rule,) = [rule for rule in load_yaml(RULES)["groups"][0]["rules"] if rule.get("alert") == ALERT]
    filled = {"{{ $labels.model }}": model, "{{ $labels.figure }}": figure}
    filled['{{ $value | printf "%.3f" }}'] = f"{median:.3f}"
    annotations = {}
    for key, text in rule["annotations"].items():
        for template, value in filled.items():
            text = text.replace(template, value)
        annotations[key] = text
    return {"exp_labels": {"model": model, "figure": figure, **rule["labels"]}, "exp_annotations": annotations}


def promtool_test(tmp_path: Path, series: list[dict], expected: dict[str, list[dict]]) -> None:
    """``promtool test rules`` on ``series``: the alerts firing at each evaluation time of ``expected`` are exactly
    those listed."""
    case = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [{"eval_time": at, "alertname": ALERT, "exp_alerts": alerts}
                                for at, alerts in expected.items()],
        }],
    }  # fmt: skip
    (tmp_path / "test.yml").write_text(yaml.safe_dump(case, sort_keys=False))
    result = subprocess.run([promtool_binary(), "test", "rules", str(tmp_path / "test.yml")], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


ALL = tuple(BAND)


def test_healthy_traffic_raises_no_alert(tmp_path: Path) -> None:
    promtool_test(tmp_path, traffic("m", HEALTHY, 20) + recorded("m", ALL), {"15m": [], "40m": [], "59m": []})


@pytest.mark.parametrize(
    "figure, value",
    [("attention_entropy", 0.92), ("attention_peak", 0.12), ("top1_probability", 0.9), ("attention_entropy", 0.3)],
    ids=["attention-spreads", "peak-falls", "confidence-sags", "attention-narrows"],
)
def test_a_median_outside_the_quartiles_fires_after_ten_minutes(tmp_path: Path, figure: str, value: float) -> None:
    series = traffic("m", {**HEALTHY, figure: value}, 20) + recorded("m", ALL)
    alert = firing("m", figure, bucket_median(value))
    promtool_test(tmp_path, series, {"5m": [], "20m": [alert], "59m": [alert]})


def test_every_replica_counts_and_their_identical_bands_match_once(tmp_path: Path) -> None:
    drifted = {**HEALTHY, "attention_entropy": 0.92}
    series = [*traffic("m", drifted, 8, "a"), *traffic("m", drifted, 8, "b"), *recorded("m", ALL, "a"),
              *recorded("m", ALL, "b")]  # fmt: skip
    promtool_test(tmp_path, series, {"30m": [firing("m", "attention_entropy", bucket_median(0.92))]})


def test_too_few_images_raise_no_alert(tmp_path: Path) -> None:
    """5 images in ten minutes: their median is too noisy to call a drift."""
    series = traffic("m", {**HEALTHY, "attention_entropy": 0.92}, 0.5) + recorded("m", ALL)
    promtool_test(tmp_path, series, {"20m": [], "59m": []})


def test_a_gap_model_is_watched_on_its_top1_probability_alone(tmp_path: Path) -> None:
    top1 = ("top1_probability",)
    healthy = traffic("gap", {"top1_probability": 0.9995}, 20) + recorded("gap", top1)
    promtool_test(tmp_path, healthy, {"40m": []})
    sagging = traffic("gap", {"top1_probability": 0.8}, 20) + recorded("gap", top1)
    promtool_test(tmp_path, sagging, {"40m": [firing("gap", "top1_probability", bucket_median(0.8))]})


def test_a_model_without_a_recorded_band_raises_no_alert(tmp_path: Path) -> None:
    promtool_test(tmp_path, traffic("older", {**HEALTHY, "attention_entropy": 0.92}, 20), {"40m": []})


def test_the_rules_and_the_compose_config_pass_promtool_checks() -> None:
    for command in (["check", "rules", str(RULES)], ["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")]):
        result = subprocess.run([promtool_binary(), *command], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    assert config["rule_files"] == [RULES.name]  # beside the config: compose mounts both in one folder
    prometheus = load_yaml(COMPOSE)["services"]["prometheus"]
    mounts = {m["source"]: m["target"] for m in prometheus["volumes"] if isinstance(m, dict) and m["type"] == "bind"}
    config_target = Path(mounts["./deploy/prometheus/prometheus.yml"])
    assert Path(mounts[f"./{RULES.relative_to(REPO).as_posix()}"]) == config_target.with_name(RULES.name)


def test_the_prometheus_operator_rule_holds_the_same_groups() -> None:
    (document,) = [doc for doc in yaml.safe_load_all(PROMETHEUS_RULE.read_text()) if doc]
    assert document["spec"]["groups"] == load_yaml(RULES)["groups"]
    assert (
        document["metadata"]["labels"]
        == load_yaml(K8S / "prometheus-operator" / "podmonitor.yaml")["metadata"]["labels"]
    )


def validator(version: str) -> jsonschema.Draft202012Validator:
    folder = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}-local-strict"
    definitions = Resource.from_contents(json.loads((folder / "_definitions.json").read_text()))
    return jsonschema.Draft202012Validator(SCHEMA, registry=definitions @ Registry())


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_prometheus_rule_follows_the_schema(version: str) -> None:
    validator(version).validate(load_yaml(PROMETHEUS_RULE))


@pytest.mark.parametrize(
    "path, value",
    [
        (("spec", "groups", 0, "rules", 0, "for"), "10m"),  # a recording rule does not wait
        (("spec", "groups", 0, "rules", 4, "for"), "ten minutes"),
        (("spec", "groups", 0, "rules", 4, "labels"), {"severity": 1}),
        (("spec", "group"), []),  # misspelt
    ],
)
def test_the_schema_rejects_a_broken_prometheus_rule(path: tuple, value: object) -> None:
    broken = with_value(load_yaml(PROMETHEUS_RULE), path, value)
    with pytest.raises(jsonschema.ValidationError):
        validator(KUBERNETES_VERSIONS[0]).validate(broken)


def test_the_rules_name_only_exported_metrics_and_recorded_series(live_metrics: Exposition) -> None:
    rules = load_yaml(RULES)["groups"][0]["rules"]
    recordings = [rule for rule in rules if "record" in rule]
    problems = {rule["expr"]: query_problems(rule["expr"], live_metrics) for rule in recordings}
    # The alert reads what the rules record: each with the labels its expression keeps, and those it adds.
    known = Exposition(copy.deepcopy(live_metrics.labels), copy.deepcopy(live_metrics.values))
    for rule in recordings:
        grouped = rule["expr"].split("sum by (")[1].split(")")[0].replace(" ", "").split(",")
        known.labels.setdefault(rule["record"], set()).update({*grouped, *rule.get("labels", {})} - {"le"})
    (alert,) = [rule for rule in rules if "alert" in rule]
    problems[alert["expr"]] = query_problems(alert["expr"], known)
    assert {expr: found for expr, found in problems.items() if found} == {}
