"""The serving images: hadolint clean, pinned, non-root, dependencies before code, only the files they need."""

from __future__ import annotations

import re
import subprocess
import sysconfig
from pathlib import Path

import pytest

from tests.deploy.deploytools import (
    DEFAULT_MODEL,
    DEPLOY,
    DOCKERFILES,
    REPO,
    copies,
    dockerfile,
    image_env,
    in_build_context,
    stage_instructions,
    stages,
)

HADOLINT = Path(sysconfig.get_path("scripts")) / "hadolint"
REQUIREMENTS = {"cpu": "deploy/requirements-serve.txt", "gpu": "deploy/requirements-serve-gpu.txt"}
VARIANTS = list(DOCKERFILES)


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, timeout=60)


CHECKPOINT = "checkpoints/default/castream.pt"  # the shipped model: 47 MB the image never needs


def test_every_dockerfile_is_covered() -> None:
    found = {path for path in DEPLOY.glob("Dockerfile*") if not path.name.endswith(".dockerignore")}
    assert found == set(DOCKERFILES.values())


@pytest.mark.parametrize("variant", VARIANTS)
def test_hadolint_finds_nothing(variant: str) -> None:
    result = hadolint(DOCKERFILES[variant])
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_does_report_problems(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install curl\nRUN cd /app && pip install x\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert {"DL3007", "DL3008", "DL3013"} <= set(re.findall(r"DL\d{4}", result.stdout)), result.stdout


@pytest.mark.parametrize("variant", VARIANTS)
def test_base_images_are_pinned(variant: str) -> None:
    path = DOCKERFILES[variant]
    own = set(stages(path))
    bases = [base for base in stages(path).values() if base not in own]
    assert bases
    for base in bases:
        name, _, tag = base.partition(":")
        assert re.search(r"\d+\.\d+", tag) and "latest" not in tag, f"{path.name}: {base} is not pinned to a version"


@pytest.mark.parametrize("variant", VARIANTS)
def test_runs_as_a_numeric_non_root_user_with_a_readiness_healthcheck(variant: str) -> None:
    path = DOCKERFILES[variant]
    for stage in ("runtime", "bundled"):
        user = stage_instructions(path, stage, "USER")[-1]
        assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"{stage}: USER {user} must be a numeric non-root uid:gid"
        (healthcheck,) = stage_instructions(path, stage, "HEALTHCHECK")
        command = healthcheck.split(" CMD ", 1)[1]
        assert command == '["python", "/app/healthcheck.py"]'
    assert ("runtime", "deploy/healthcheck.py", "/app/healthcheck.py") in copies(path)


@pytest.mark.parametrize("variant", VARIANTS)
def test_dependencies_are_installed_before_the_code_is_copied(variant: str) -> None:
    path = DOCKERFILES[variant]
    instructions = dockerfile(path)
    requirement_copy = next(
        n for n, i in enumerate(instructions) if i.keyword == "COPY" and REQUIREMENTS[variant] in i.args
    )
    install = next(n for n, i in enumerate(instructions) if i.keyword == "RUN" and "pip install" in i.args)
    code_copy = next(n for n, i in enumerate(instructions) if i.keyword == "COPY" and "service/" in i.args)
    assert requirement_copy < install < code_copy
    assert "-r /tmp/" + Path(REQUIREMENTS[variant]).name in instructions[install].args
    other = REQUIREMENTS["gpu" if variant == "cpu" else "cpu"]
    assert all(other not in i.args for i in instructions), f"{path.name} must not install {other}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_image_serves_the_model_at_its_configured_path(variant: str) -> None:
    path = DOCKERFILES[variant]
    env = image_env(path, "bundled")
    assert stage_instructions(path, "runtime", "CMD") == ['["python", "-m", "service"]']
    assert (REPO / "service" / "__main__.py").is_file()
    assert stage_instructions(path, "runtime", "EXPOSE") == [env["CASTREAM_PORT"]]
    assert ("bundled", DEFAULT_MODEL.as_posix(), env["CASTREAM_MODEL_PATH"]) in copies(path)
    assert stages(path)["bundled"] == "runtime"
    assert list(stages(path))[-1] == "bundled", "the default build target is the image with the model"


@pytest.mark.parametrize("variant", VARIANTS)
def test_build_context_holds_what_is_copied_and_nothing_heavy(variant: str) -> None:
    path = DOCKERFILES[variant]
    ignore = path.with_name(path.name + ".dockerignore")
    for _, source, _ in copies(path):
        if source == DEFAULT_MODEL.as_posix():  # built by `make export` before the image
            assert in_build_context(ignore, source)
            continue
        files = [source] if (REPO / source).is_file() else [
            p.relative_to(REPO).as_posix() for p in (REPO / source).rglob("*.py") if "__pycache__" not in p.parts
        ]  # fmt: skip
        assert files, f"COPY {source}: nothing there"
        assert all(in_build_context(ignore, f) for f in files), f"{ignore.name} leaves out part of {source}"
    for heavy in (".venv/bin/python", "training/fit.py", "export/to_onnx.py", CHECKPOINT, ".git/HEAD"):
        assert not in_build_context(ignore, heavy), f"{heavy} would be sent to the build"
    assert not in_build_context(ignore, "service/__pycache__/app.cpython-311.pyc")
