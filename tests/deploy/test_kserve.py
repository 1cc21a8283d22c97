"""The KServe manifests: strict schemas of KServe's resources, and the links between them, the service and Triton.

kubernetes-validate knows only Kubernetes' own kinds, so InferenceService and ServingRuntime are checked against
tests/deploy/schemas/kserve-*.schema.json (the fields of KServe's CRDs that castream uses, nothing else), which
refer to Kubernetes' schemas for metadata, containers, probes, resources, volumes and tolerations.
"""

from __future__ import annotations

import json
import os
import re
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
from referencing import Registry, Resource

from export.triton import DEFAULTS
from service.settings import PREFIX, load_settings
from tests.deploy.deploytools import (
    DEPLOY,
    DOCKERFILES,
    SETTING_NAMES,
    container_env,
    load_yaml_documents,
    manifests,
    with_value,
)
from tests.deploy.test_kubernetes import KUBERNETES_VERSIONS, VERSION

KSERVE = DEPLOY / "kserve"
SCHEMAS = Path(__file__).with_name("schemas")
SCHEMA_FILES = {
    "InferenceService": SCHEMAS / "kserve-inferenceservice-v1beta1.schema.json",
    "ServingRuntime": SCHEMAS / "kserve-servingruntime-v1alpha1.schema.json",
}
TRITON = {"cpu": KSERVE / "triton" / "inferenceservice.yaml", "gpu": KSERVE / "triton" / "inferenceservice-gpu.yaml"}
CASTREAM_RUNTIME = KSERVE / "castream" / "servingruntime.yaml"
CASTREAM_SERVICE = KSERVE / "castream" / "inferenceservice.yaml"
TRITON_HTTP_PORT = 8080  # kserve-tritonserver runs tritonserver --http-port=8080


def manifest_files() -> list[Path]:
    return sorted(KSERVE.rglob("*.yaml"))


def one(path: Path) -> dict:
    (document,) = load_yaml_documents(path)
    return document


def validator(kind: str, version: str) -> jsonschema.Draft202012Validator:
    folder = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}-local-strict"
    definitions = Resource.from_contents(json.loads((folder / "_definitions.json").read_text()))
    schema = json.loads(SCHEMA_FILES[kind].read_text())
    return jsonschema.Draft202012Validator(schema, registry=definitions @ Registry())


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.relative_to(KSERVE).as_posix())
def test_manifests_follow_the_schemas(path: Path, version: str) -> None:
    document = one(path)
    validator(document["kind"], version).validate(document)
    assert document["metadata"]["labels"]["app.kubernetes.io/version"] == VERSION


def test_every_manifest_is_checked() -> None:
    assert set(manifest_files()) == {*TRITON.values(), CASTREAM_RUNTIME, CASTREAM_SERVICE}


@pytest.mark.parametrize(
    "path, where, value",
    [
        (TRITON["cpu"], ("spec", "predictor", "model", "modelFromat"), {"name": "onnx"}),  # misspelt
        (TRITON["cpu"], ("spec", "predictor", "model", "protocolVersion"), "v3"),
        (TRITON["cpu"], ("spec", "predictor", "scaleMetric"), "latency"),
        (TRITON["cpu"], ("spec", "predictor", "model", "storageUri"), "models/castream"),  # no scheme
        (TRITON["cpu"], ("spec", "predictor", "model", "readinessProbe", "httpGet", "paht"), "/"),  # Kubernetes' Probe
        (CASTREAM_RUNTIME, ("spec", "supportedModelFormats", 0, "autoselect"), True),
        (CASTREAM_RUNTIME, ("spec", "containers", 0, "env", 0, "valeu"), "x"),  # Kubernetes' EnvVar
        (CASTREAM_RUNTIME, ("spec", "protocolVersions"), ["v2", "http"]),
    ],
)
def test_the_schemas_reject_broken_manifests(path: Path, where: tuple, value: object) -> None:
    broken = with_value(one(path), where, value)
    with pytest.raises(jsonschema.ValidationError):
        validator(broken["kind"], KUBERNETES_VERSIONS[0]).validate(broken)


# Triton


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_triton_service_runs_the_repository_on_kserves_triton_runtime(kind: str) -> None:
    document = one(TRITON[kind])
    predictor = document["spec"]["predictor"]
    model = predictor["model"]
    assert model["runtime"] == "kserve-tritonserver" and model["modelFormat"]["name"] in ("onnx", "triton")
    assert model["protocolVersion"] == "v2"
    assert model["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": TRITON_HTTP_PORT}
    assert model["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": TRITON_HTTP_PORT}
    # About one batch in flight per replica: the repository's max_batch_size for that kind.
    assert predictor["scaleMetric"] == "concurrency"
    assert predictor["scaleTarget"] == DEFAULTS[kind]["max_batch_size"]
    assert predictor["maxReplicas"] > predictor["minReplicas"] >= 2
    limits, requests = model["resources"]["limits"], model["resources"]["requests"]
    cpus = float(limits["cpu"])
    assert cpus >= DEFAULTS[kind]["intra_op_threads"], "ONNX Runtime's threads fit the CPU limit"
    if kind == "gpu":
        assert limits["nvidia.com/gpu"] == requests["nvidia.com/gpu"] == 1
        assert any(t["key"] == "nvidia.com/gpu" for t in predictor["tolerations"])
        assert "--kind gpu" in TRITON[kind].read_text() and "--triton-kind gpu" in TRITON[kind].read_text()
    else:
        assert "nvidia.com/gpu" not in limits and "tolerations" not in predictor
    assert "python -m export.triton" in TRITON[kind].read_text(), "the file says how to write the repository"


def test_triton_variants_replace_each_other() -> None:
    names = {one(path)["metadata"]["name"] for path in TRITON.values()}
    assert names == {"castream-triton"}
    assert (
        one(TRITON["cpu"])["spec"]["predictor"]["model"]["storageUri"]
        != one(TRITON["gpu"])["spec"]["predictor"]["model"]["storageUri"]
    ), "CPU and GPU repositories differ (instance kind, batch size, warm-up)"


# castream's own runtime


def runtime_container() -> dict:
    (container,) = one(CASTREAM_RUNTIME)["spec"]["containers"]
    return container


def test_castream_service_selects_the_castream_runtime() -> None:
    runtime, service = one(CASTREAM_RUNTIME), one(CASTREAM_SERVICE)
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"] == ["v2"]
    assert runtime["spec"]["multiModel"] is False
    assert set(model) <= {"modelFormat", "runtime", "protocolVersion", "storageUri"}, "the runtime holds the rest"


def test_castream_runtime_serves_the_downloaded_file_on_kserves_port() -> None:
    container = runtime_container()
    env = container_env(container)
    assert container["name"] == "kserve-container"
    (port,) = container["ports"]
    assert port["containerPort"] == int(env["CASTREAM_PORT"]) == 8080
    # KServe's storage initializer downloads storageUri into /mnt/models.
    assert env["CASTREAM_MODEL_PATH"] == "/mnt/models/castream.onnx"
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        assert container[probe]["httpGet"] == {"path": path, "port": port["containerPort"]}, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    annotations = one(CASTREAM_RUNTIME)["spec"]["annotations"]
    assert annotations == {"prometheus.kserve.io/port": env["CASTREAM_PORT"], "prometheus.kserve.io/path": "/metrics"}


def test_castream_runtime_matches_the_kubernetes_cpu_pods() -> None:
    container = runtime_container()
    (pod,) = manifests("cpu")["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == pod["resources"]
    differ = {"CASTREAM_PORT", "CASTREAM_MODEL_PATH"}
    ours, theirs = container_env(container), container_env(pod)
    assert {k: v for k, v in ours.items() if k not in differ} == {k: v for k, v in theirs.items() if k not in differ}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        timing = {k: v for k, v in container[probe].items() if k != "httpGet"}
        assert timing == {k: v for k, v in pod[probe].items() if k != "httpGet"}, probe


def test_castream_runtime_uses_the_runtime_image_as_its_user() -> None:
    container = runtime_container()
    dockerfile = DOCKERFILES["cpu"].read_text()
    assert container["image"] == f"castream-runtime:{VERSION}"
    assert f"--target runtime -t {container['image']} ." in dockerfile, "the Dockerfile documents this tag"
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True and str(context["runAsUser"]) == user[1]
    assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"] for v in one(CASTREAM_RUNTIME)["spec"]["volumes"]}
    assert mounts == {"tmp": "/tmp"} and volumes == {"tmp"}, "uploads spill to /tmp; the root file system is read-only"


def test_castream_runtime_settings_are_accepted_by_the_service(
    monkeypatch: pytest.MonkeyPatch, model_path: Path
) -> None:
    env = container_env(runtime_container())
    assert set(env) <= SETTING_NAMES
    for name in [n for n in os.environ if n.startswith(PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(model_path=model_path)  # the downloaded file itself exists only in the pod
    assert settings.host == "0.0.0.0" and settings.port == 8080
    timeout_s = one(CASTREAM_SERVICE)["spec"]["predictor"]["timeout"]
    assert timeout_s * 1000 > settings.request_timeout_ms, "the service answers 504 before the gateway gives up"
    assert one(CASTREAM_SERVICE)["spec"]["predictor"]["scaleTarget"] == settings.max_batch_size
