"""Fixtures for the deployment checks: the service tests' tiny model and real app, a live /metrics, and for the slow
container tests the CPU image built in a real Docker engine and a container of it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.containertools import IMAGE, BuiltImage, Container, build, provide_base, run_container, start_engine
from tests.deploy.deploytools import DOCKERFILES, Exposition, compose_service, stages
from tests.export.conftest import export_tiny
from tests.service.conftest import app_client, live_server, model_path  # noqa: F401 (fixtures shared with tests/service)
from tests.service.servicetools import COLOURS, free_port, solid_png

BUILT: list[BuiltImage] = []  # reported at the end of the run


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


@pytest.fixture(scope="session")
def runtime_image() -> BuiltImage:
    """deploy/Dockerfile's ``runtime`` target, built on a real engine (started here where none runs)."""
    start_engine()
    base = stages(DOCKERFILES["cpu"])["runtime"]
    provided = provide_base(base)
    image = BuiltImage(IMAGE, provided, build(DOCKERFILES["cpu"], "runtime", IMAGE)[0])
    BUILT.append(image)
    return image


@pytest.fixture(scope="session")
def model_folder(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``castream.onnx``: the tiny CA-Stream run exported, mounted exactly as export wrote it.

    Export creates the folder itself, as ``make export`` creates ``models/``; the image's uid 10001 must be able
    to read both without help.
    """
    folder = tmp_path_factory.mktemp("container") / "models"
    export_tiny(tiny_checkpoint, folder / "castream.onnx")
    return folder


@pytest.fixture(scope="session")
def served(runtime_image: BuiltImage, model_folder: Path) -> Iterator[Container]:
    """The image run as compose runs it (its environment), with a read-only root file system and /tmp in memory
    (the Kubernetes manifests mount an emptyDir there)."""
    env = {k: str(v) for k, v in compose_service("cpu")["environment"].items()}
    options = ["--read-only", "--tmpfs", "/tmp", "--stop-timeout", "30"]
    container = run_container(runtime_image.tag, "castream-test", free_port(), model_folder, *options, **env)
    yield container
    container.remove()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for image in BUILT:
        terminalreporter.write_line(f"built {image.tag} in {image.seconds:.0f} s; base image: {image.base}")
