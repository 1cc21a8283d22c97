"""Fixtures for the service tests: tiny models, the real app behind a TestClient, live servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.servicetools import LiveServer, make_settings, save_model, wait_ready


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tmp_path_factory.mktemp("models") / "tiny-ca.onnx")


@pytest.fixture(scope="session")
def gap_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tmp_path_factory.mktemp("models") / "tiny-gap.onnx", "gap")


@pytest.fixture
def app_client(model_path: Path) -> Iterator[Callable[..., TestClient]]:
    """``app_client(**settings)`` opens a TestClient on the real app (lifespan included), ready to serve."""
    opened: list[TestClient] = []

    def open_client(model: Path | None = None, ready: bool = True, **overrides: object) -> TestClient:
        client = TestClient(create_app(make_settings(model or model_path, **overrides)))
        client.__enter__()
        opened.append(client)
        if ready:
            wait_ready(client)
        return client

    yield open_client
    for client in reversed(opened):
        client.__exit__(None, None, None)


@pytest.fixture
def client(app_client: Callable[..., TestClient]) -> TestClient:
    return app_client()


@pytest.fixture
def live_server(model_path: Path) -> Iterator[Callable[..., LiveServer]]:
    started: list[LiveServer] = []

    def start(model: Path | None = None, ready: bool = True, **env: str) -> LiveServer:
        server = LiveServer(model or model_path, **env)
        started.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()
