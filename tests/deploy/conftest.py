"""Fixtures for the deployment checks: the service tests' tiny model and real app, and a live /metrics."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.deploytools import Exposition
from tests.service.conftest import app_client, live_server, model_path  # noqa: F401 (fixtures shared with tests/service)
from tests.service.servicetools import COLOURS, solid_png


@pytest.fixture
def live_metrics(app_client: Callable[..., TestClient]) -> Exposition:  # noqa: F811
    """``GET /metrics`` of the real app after traffic that touches every metric: a classified image, a refused
    request, the probes."""
    client = app_client()
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    image = solid_png(COLOURS["red"])
    assert client.post("/classify", files=[("file", ("red.png", image, "image/png"))]).status_code == 200
    assert client.post("/classify", content=b"x", headers={"content-type": "text/plain"}).status_code == 415
    response = client.get("/metrics")
    assert response.status_code == 200
    live = Exposition(labels={}, values={})
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            live.labels.setdefault(sample.name, set()).update(sample.labels)
            for label, value in sample.labels.items():
                live.values.setdefault((sample.name, label), set()).add(value)
    return live
