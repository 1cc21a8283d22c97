"""The CPU image built from deploy/Dockerfile and run in a real Docker engine, next to the same service outside it.

Slow: the first run installs the engine (and, where no registry answers, builds a stand-in base image), then every
run builds the image and starts containers. The engine is left running for the next run.
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.deploy.containertools import CA_BUNDLE, IMAGE, BuiltImage, Container, docker, inspect, run_container
from tests.deploy.deploytools import REPO
from tests.service.servicetools import LiveServer, free_port

pytestmark = pytest.mark.slow

IMAGES = {
    "example.png": (REPO / "docs" / "images" / "example.png").read_bytes(),
    "interpretability.png": (REPO / "docs" / "images" / "interpretability.png").read_bytes(),  # a palette image
}


def jpeg(data: bytes) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


IMAGES["example.jpg"] = jpeg(IMAGES["example.png"])


@pytest.fixture(scope="module")
def outside(model_folder: Path) -> Iterator[LiveServer]:
    """The same model served by ``python -m service`` on this machine, outside any container."""
    server = LiveServer(model_folder / "castream.onnx")
    server.wait_ready()
    yield server
    server.stop()


def classify(url: str, name: str, data: bytes, **params: str) -> httpx.Response:
    return httpx.post(f"{url}/classify", files=[("file", (name, data))], params=params, timeout=60)


def test_the_image_holds_the_service_without_torch_or_build_secrets(runtime_image: BuiltImage) -> None:
    config = inspect(IMAGE)["Config"]
    assert config["User"] == "10001:10001"
    assert config["Healthcheck"]["Test"] == ["CMD", "python", "/app/healthcheck.py"]
    assert "CASTREAM_MODEL_PATH=/models/castream.onnx" in config["Env"]
    assert not any(variable.startswith(("PIP_CERT=", "SSL_CERT_FILE=")) for variable in config["Env"])
    probe = (
        "import importlib.util as u, onnxruntime, fastapi, service.app;"
        "assert u.find_spec('torch') is None and u.find_spec('torchvision') is None"
    )
    docker("run", "--rm", "--network", "host", "--workdir", "/app", IMAGE, "python", "-c", probe)
    # The CA bundle was lent to pip for one step: no file of the image is a copy of it.
    bundle = CA_BUNDLE.read_bytes()
    same_size = f"find / -xdev -type f -size {len(bundle)}c -exec sha256sum {{}} +; test ! -e /run/secrets/ca-bundle"
    found = docker("run", "--rm", "--network", "host", IMAGE, "sh", "-c", same_size).stdout
    assert hashlib.sha256(bundle).hexdigest() not in found, found


def test_container_turns_healthy_and_runs_as_uid_10001(served: Container) -> None:
    served.wait_healthy()
    status = docker("exec", served.name, "cat", "/proc/1/status").stdout
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    gids = next(line for line in status.splitlines() if line.startswith("Gid:")).split()[1:]
    assert uids == ["10001"] * 4 and gids == ["10001"] * 4
    assert "python -m service" in docker("exec", served.name, "cat", "/proc/1/cmdline").stdout.replace("\0", " ")


def test_root_file_system_is_read_only(served: Container) -> None:
    served.wait_ready()
    assert inspect(served.name)["HostConfig"]["ReadonlyRootfs"] is True
    result = docker("exec", served.name, "touch", "/app/written", check=False)
    assert result.returncode != 0 and "Read-only file system" in result.stderr
    # An upload over 1 MB spills to /tmp, the only writable place.
    noise = np.random.default_rng(0).integers(0, 256, (900, 900, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(noise).save(out, format="PNG")
    assert len(out.getvalue()) > 2**20
    response = classify(served.url, "noise.png", out.getvalue())
    assert response.status_code == 200, response.text


def test_classify_answers_as_the_service_outside_the_container(served: Container, outside: LiveServer) -> None:
    served.wait_ready()
    for name, data in IMAGES.items():
        inside, host = (classify(url, name, data, top_k="3", attention="grid") for url in (served.url, outside.url))
        assert inside.status_code == host.status_code == 200, (name, inside.text, host.text)
        (got,), (expected,) = inside.json()["predictions"], host.json()["predictions"]
        assert [t["label"] for t in got["top_k"]] == [t["label"] for t in expected["top_k"]], name
        assert np.allclose([t["score"] for t in got["top_k"]], [t["score"] for t in expected["top_k"]], atol=1e-5)
        assert np.allclose(got["attention"]["values"], expected["attention"]["values"], atol=1e-5)
    encoded = base64.b64encode(IMAGES["example.png"]).decode()
    response = httpx.post(f"{served.url}/classify", json={"images": [encoded]}, timeout=60)
    assert response.status_code == 200
    refused = httpx.post(f"{served.url}/classify", content=b"x", headers={"content-type": "text/plain"}, timeout=60)
    assert refused.status_code == 415 and refused.json()["code"]


def test_docker_stop_drains_a_request_in_flight(runtime_image: BuiltImage, model_folder: Path) -> None:
    # A long batch delay holds the request in the queue while the container is told to stop.
    env = {"CASTREAM_MAX_BATCH_DELAY_MS": "3000", "CASTREAM_DRAIN_DELAY_S": "1", "CASTREAM_SHUTDOWN_TIMEOUT_S": "20"}
    container = run_container(IMAGE, "castream-drain-test", free_port(), model_folder, "--read-only",
                              "--tmpfs", "/tmp", **env)  # fmt: skip
    try:
        container.wait_ready()
        answers: list[httpx.Response | BaseException] = []

        def send() -> None:
            try:
                answers.append(classify(container.url, "example.png", IMAGES["example.png"]))
            except BaseException as exc:  # a reset connection is the failure this test looks for
                answers.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        deadline = time.monotonic() + 10
        while "castream_queue_depth 1.0" not in httpx.get(f"{container.url}/metrics", timeout=5).text:
            assert time.monotonic() < deadline, "the request never reached the queue"
            time.sleep(0.05)
        started = time.monotonic()
        docker("stop", "--time", "30", container.name, timeout=60)
        stopped_after = time.monotonic() - started
        sender.join(30)
        (answer,) = answers
        assert isinstance(answer, httpx.Response), f"the request in flight failed: {answer!r}\n{container.logs()}"
        assert answer.status_code == 200, answer.text
        ended = inspect(container.name)["State"]
        assert ended["ExitCode"] == 0 and not ended["OOMKilled"], container.logs()
        assert stopped_after < 25, "the service exited on its own, before Docker's SIGKILL"
    finally:
        container.remove()
