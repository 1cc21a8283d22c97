"""A real Docker engine for the container tests: start it, provide base images, build, run and inspect containers.

The engine runs without a bridge network (deploy/offline/docker-engine.sh), so every build step and container uses
the host's network and the service is reached on 127.0.0.1.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.deploy.deploytools import DEPLOY, REPO, compose_service

# The engine's own client from Debian's docker.io: it has BuildKit built in, where a newer client on PATH may need
# the buildx plugin that no reachable registry offers.
DOCKER = "/usr/bin/docker"
IMAGE = compose_service("cpu")["image"]  # the name compose builds and runs
ENGINE_SCRIPT = DEPLOY / "offline" / "docker-engine.sh"
STANDIN_SCRIPT = DEPLOY / "offline" / "standin-base.sh"
STANDIN_CACHE = REPO / ".cache" / "standin"
# The machine's CA bundle: lent to pip in the build as a secret, so TLS works behind an intercepting proxy.
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def run(command: list[str], timeout: float, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([DOCKER, *args], timeout=timeout, check=check)


def start_engine() -> None:
    """Installs and starts the engine where none answers; fails with the engine's log otherwise."""
    run(["bash", str(ENGINE_SCRIPT)], timeout=900)
    assert Path(DOCKER).is_file(), f"{ENGINE_SCRIPT.name} left no {DOCKER}"


def provide_base(image: str) -> str:
    """Makes ``image`` available under its own name: already there, pulled, or a local stand-in. Returns how."""
    result = run(["bash", str(STANDIN_SCRIPT), image, str(STANDIN_CACHE)], timeout=1800, cwd=REPO)
    return result.stdout.strip().splitlines()[-1]


def build(dockerfile: Path, target: str, tag: str, check: bool = True) -> tuple[float, str, int]:
    """``docker build`` from the repository root with BuildKit, as users build the image (plus the host network, as
    the engine has no bridge). Returns the seconds taken, the build's log and its exit status."""
    secret = f"id=ca-bundle,src={CA_BUNDLE}" if CA_BUNDLE.is_file() else None
    command = [DOCKER, "build", "--network", "host", "--progress", "plain", "-f", str(dockerfile.relative_to(REPO))]
    command += ["--target", target, "-t", tag, *(["--secret", secret] if secret else []), "."]
    start = time.monotonic()
    result = run(command, timeout=1800, check=check, cwd=REPO, env={**os.environ, "DOCKER_BUILDKIT": "1"})
    return time.monotonic() - start, result.stdout + result.stderr, result.returncode


def pulled(image: str) -> bool:
    """Whether ``image`` is here or can be pulled now."""
    if docker("image", "inspect", image, check=False).returncode == 0:
        return True
    return run([DOCKER, "pull", "-q", image], timeout=120, check=False).returncode == 0


def standin_uv(image: str) -> None:
    """Tags as ``image`` (ghcr.io/astral-sh/uv:VERSION) an image of the same uv release taken from its PyPI wheel."""
    version = image.rsplit(":", 1)[1]
    wheels = STANDIN_CACHE / "uv"
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--platform",
               "manylinux_2_17_x86_64", "--python-version", "3.11", "-d", str(wheels), f"uv=={version}"]  # fmt: skip
    run(command, timeout=600)
    (wheel,) = wheels.glob(f"uv-{version}-*.whl")
    archive = io.BytesIO()
    with zipfile.ZipFile(wheel) as zipped, tarfile.open(fileobj=archive, mode="w") as tar:
        for name in ("uv", "uvx"):
            data = zipped.read(f"uv-{version}.data/scripts/{name}")
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    command = [DOCKER, "import", "-", image]
    imported = subprocess.run(command, input=archive.getvalue(), capture_output=True, timeout=300)
    assert imported.returncode == 0, imported.stderr.decode()


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    base: str  # how the base image was provided: already there, pulled, or a stand-in
    seconds: float  # the build's wall time


def inspect(name: str) -> dict:
    return json.loads(docker("inspect", name).stdout)[0]


@dataclass
class Container:
    """A detached container on the host network, serving on ``port``."""

    name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        result = docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def health(self) -> str:
        status = inspect(self.name)["State"]
        return status.get("Health", {}).get("Status", status["Status"])

    def wait_healthy(self, timeout: float = 120) -> None:
        """Waits for the image's own HEALTHCHECK to report healthy."""
        deadline = time.monotonic() + timeout
        while (status := self.health()) != "healthy":
            assert status in {"starting", "running", "created"}, f"{self.name} is {status}:\n{self.logs()}"
            assert time.monotonic() < deadline, f"{self.name} not healthy after {timeout} s:\n{self.logs()}"
            time.sleep(0.5)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert inspect(self.name)["State"]["Running"], f"{self.name} stopped:\n{self.logs()}"
            assert time.monotonic() < deadline, f"{self.name} not ready after {timeout} s:\n{self.logs()}"
            time.sleep(0.2)

    def remove(self) -> None:
        docker("rm", "--force", self.name, check=False)


def run_container(image: str, name: str, port: int, models: Path, *options: str, **env: str) -> Container:
    """Runs ``image`` like the compose file does: model folder mounted read-only at /models, plus ``options``."""
    # Loopback only: on the host network, the default 0.0.0.0 would listen on every interface of the machine.
    variables = {**env, "CASTREAM_HOST": "127.0.0.1", "CASTREAM_PORT": str(port)}
    docker("rm", "--force", name, check=False)
    command = ["run", "--detach", "--name", name, "--network", "host", "--volume", f"{models}:/models:ro", *options]
    for key, value in variables.items():
        command += ["--env", f"{key}={value}"]
    docker(*command, image)
    return Container(name, port)


def prometheus_binary() -> str:
    """Debian's ``prometheus``, installed where missing."""
    if not Path("/usr/bin/prometheus").is_file():
        assert os.geteuid() == 0, "Prometheus is missing and installing it needs root: apt-get install prometheus"
        apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]
        run([*apt, "update", "-q"], timeout=600)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run([*apt, "install", "-y", "-q", "--no-install-recommends", "prometheus"], timeout=900, env=env)
    return "/usr/bin/prometheus"


def promtool_binary() -> str:
    """Debian's ``promtool``, which comes with its ``prometheus``."""
    return str(Path(prometheus_binary()).with_name("promtool"))
