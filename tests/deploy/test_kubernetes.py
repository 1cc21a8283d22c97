"""The Kubernetes manifests: the Kubernetes schemas, probes, draining, autoscaling and the objects' links."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import kubernetes_validate
import pytest
from packaging.version import Version

from service.settings import Settings
from tests.deploy.deploytools import (
    ADAPTER_VALUES,
    DOCKERFILES,
    K8S,
    all_manifest_files,
    container_env,
    image_env,
    load_yaml,
    load_yaml_documents,
    manifests,
)

# The oldest release with the native preStop sleep action, and a recent one.
KUBERNETES_VERSIONS = ["1.30.0", "1.35.0"]
VARIANTS = ["cpu", "gpu"]
VERSION = "0.1.0"


def container(variant: str) -> dict:
    (main,) = manifests(variant)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return main


def settings_value(env: dict[str, str], name: str) -> float:
    field = name.removeprefix("CASTREAM_").lower()
    return float(env.get(name, Settings.model_fields[field].default))


def cpu_quantity(text: str) -> float:
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", all_manifest_files(), ids=lambda p: p.relative_to(K8S).as_posix())
def test_manifests_validate_against_the_kubernetes_schemas(path: Path, version: str) -> None:
    documents = load_yaml_documents(path)
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)


def test_the_validator_rejects_a_broken_deployment() -> None:
    broken = copy.deepcopy(manifests("cpu")["Deployment"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_use_the_service_endpoints_on_the_served_port(variant: str) -> None:
    main = container(variant)
    env = {**image_env(DOCKERFILES[variant], "bundled"), **container_env(main)}
    (port,) = main["ports"]
    assert port["name"] == "http" and str(port["containerPort"]) == env["CASTREAM_PORT"]
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        assert main[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    # The start-up probe must allow longer than a restart loop would: a model load of a minute or more.
    startup = main["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    annotations = manifests(variant)["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == env["CASTREAM_PORT"]
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("variant", VARIANTS)
def test_grace_period_covers_prestop_drain_and_shutdown(variant: str) -> None:
    pod = manifests(variant)["Deployment"]["spec"]["template"]["spec"]
    main = container(variant)
    env = container_env(main)
    pre_stop = main["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 3, "endpoint removal needs a few seconds to reach every node"
    drain = settings_value(env, "CASTREAM_DRAIN_DELAY_S") + settings_value(env, "CASTREAM_SHUTDOWN_TIMEOUT_S")
    needed = pre_stop + drain
    assert pod["terminationGracePeriodSeconds"] >= needed + 5


@pytest.mark.parametrize("variant", VARIANTS)
def test_resources_and_threads_fit_the_container(variant: str) -> None:
    main = container(variant)
    resources, env = main["resources"], container_env(main)
    for kind in ("cpu", "memory"):
        assert kind in resources["requests"] and kind in resources["limits"]
    cpus = cpu_quantity(str(resources["limits"]["cpu"]))
    assert 1 <= settings_value(env, "CASTREAM_INTRA_OP_THREADS") <= cpus
    gpus = resources["limits"].get("nvidia.com/gpu", 0)
    providers = env["CASTREAM_PROVIDERS"].split(",")
    if variant == "gpu":
        assert gpus == 1 and resources["requests"]["nvidia.com/gpu"] == gpus and providers[0] == "cuda"
        assert any(t["key"] == "nvidia.com/gpu" for t in manifests(variant)["Deployment"]["spec"]["template"]["spec"]
                   ["tolerations"])  # fmt: skip
    else:
        assert gpus == 0 and providers == ["cpu"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_image_is_the_bundled_build_of_this_version(variant: str) -> None:
    main = container(variant)
    name, tag = main["image"].rsplit(":", 1)
    assert name.endswith("castream") and tag == VERSION + ("-gpu" if variant == "gpu" else "")
    assert f"-t castream:{tag} ." in DOCKERFILES[variant].read_text(), "the Dockerfile documents this tag"
    model = container_env(main)["CASTREAM_MODEL_PATH"]
    assert model == image_env(DOCKERFILES[variant], "bundled")["CASTREAM_MODEL_PATH"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_runs_as_the_image_user_without_privileges(variant: str) -> None:
    pod = manifests(variant)["Deployment"]["spec"]["template"]["spec"]
    user = re.search(r"^USER (\d+):(\d+)$", DOCKERFILES[variant].read_text(), re.M)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == user[1]
    context = container(variant)["securityContext"]
    assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in container(variant)["volumeMounts"]}
    assert "/tmp" in mounts, "uploads spill to /tmp; the root file system is read-only"


@pytest.mark.parametrize("variant", VARIANTS)
def test_service_pdb_and_hpa_select_the_deployment(variant: str) -> None:
    objects = manifests(variant)
    deployment = objects["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert objects["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert objects["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    target = objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"], target["apiVersion"]) == ("Deployment", deployment["metadata"]["name"],
                                                                     deployment["apiVersion"])  # fmt: skip
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert hpa["minReplicas"] > objects["PodDisruptionBudget"]["spec"]["minAvailable"], "a node drain must be possible"
    assert hpa["maxReplicas"] > hpa["minReplicas"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_hpa_scales_on_the_queue_metric_the_adapter_serves(variant: str) -> None:
    objects = manifests(variant)
    (metric,) = objects["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    served = {rule["name"]["as"] for rule in load_yaml(ADAPTER_VALUES)["rules"]["custom"]}
    assert name in served, f"prometheus-adapter publishes {served}, not {name}"
    env = container_env(container(variant))
    target = float(metric["pods"]["target"]["averageValue"])
    assert 1 <= target <= settings_value(env, "CASTREAM_MAX_BATCH_SIZE") < settings_value(env, "CASTREAM_MAX_QUEUE")


def test_adapter_rule_maps_the_series_to_pods() -> None:
    values = load_yaml(ADAPTER_VALUES)
    assert values["rules"]["default"] is False
    assert values["prometheus"]["url"].startswith("http") and isinstance(values["prometheus"]["port"], int)
    for rule in values["rules"]["custom"]:
        metric, matchers = re.fullmatch(r"(\w+)\{(.*)\}", rule["seriesQuery"]).groups()
        assert re.search(rule["name"]["matches"], metric), "the name rule must match the series"
        labels = set(re.findall(r"(\w+)!=\"\"", matchers))
        assert set(rule["resources"]["overrides"]) == labels == {"namespace", "pod"}
        assert {o["resource"] for o in rule["resources"]["overrides"].values()} == {"namespace", "pod"}
        assert "<<.Series>>{<<.LabelMatchers>>}" in rule["metricsQuery"]


def test_manifests_carry_the_project_version() -> None:
    pyproject = (K8S.parents[1] / "pyproject.toml").read_text()
    assert Version(re.search(r'^version = "([^"]+)"', pyproject, re.M)[1]) == Version(VERSION)
    for variant in VARIANTS:
        assert manifests(variant)["Deployment"]["metadata"]["labels"]["app.kubernetes.io/version"] == VERSION
