"""The PodMonitor for Prometheus Operator clusters: a strict schema, and the pods, port and path it scrapes.

kubernetes-validate knows only Kubernetes' own kinds, so the operator's resource is checked against
tests/deploy/schemas/podmonitor-v1.schema.json, which refers to Kubernetes' schemas for metadata and the selector.
"""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import pytest
from referencing import Registry, Resource

from tests.deploy.deploytools import K8S, load_yaml_documents, manifests, with_value
from tests.deploy.test_kubernetes import KUBERNETES_VERSIONS

PODMONITOR = K8S / "prometheus-operator" / "podmonitor.yaml"
SCHEMA = json.loads((K8S.parents[1] / "tests" / "deploy" / "schemas" / "podmonitor-v1.schema.json").read_text())


def validator(version: str) -> jsonschema.Draft202012Validator:
    folder = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}-local-strict"
    definitions = Resource.from_contents(json.loads((folder / "_definitions.json").read_text()))
    return jsonschema.Draft202012Validator(SCHEMA, registry=definitions @ Registry())


def podmonitor() -> dict:
    (document,) = load_yaml_documents(PODMONITOR)
    return document


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_podmonitor_follows_the_schema(version: str) -> None:
    validator(version).validate(podmonitor())


@pytest.mark.parametrize(
    "path, value",
    [
        (("spec", "podMetricEndpoints"), []),  # misspelt
        (("spec", "podMetricsEndpoints", 0, "interval"), "5 seconds"),
        (("spec", "selector", "matchLabels"), ["app.kubernetes.io/name"]),  # Kubernetes' own LabelSelector schema
        (("metadata", "labels"), {"app": 1}),  # Kubernetes' own ObjectMeta schema
    ],
)
def test_the_schema_rejects_a_broken_podmonitor(path: tuple, value: object) -> None:
    broken = with_value(podmonitor(), path, value)
    with pytest.raises(jsonschema.ValidationError):
        validator(KUBERNETES_VERSIONS[0]).validate(broken)


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_podmonitor_scrapes_the_service_port_of_every_pod(variant: str) -> None:
    spec = podmonitor()["spec"]
    template = manifests(variant)["Deployment"]["spec"]["template"]
    assert spec["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert "namespaceSelector" not in spec, "the pods live in the PodMonitor's own namespace"
    (endpoint,) = spec["podMetricsEndpoints"]
    (container,) = template["spec"]["containers"]
    assert endpoint["port"] in {port["name"] for port in container["ports"]}
    assert endpoint["path"] == template["metadata"]["annotations"]["prometheus.io/path"]
