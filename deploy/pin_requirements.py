"""Write the serving images' pinned requirements from the versions installed in the development environment.

The images install exactly these pins, and the Makefile installs the development environment with
``requirements-serve.txt`` as pip constraints, so the test suite runs what a container runs. After moving a
dependency in the development environment:

    .venv/bin/python deploy/pin_requirements.py

``deploy/requirements-serve.txt`` holds the full dependency closure of the ``serve`` and ``tracing`` extras
(and the base dependencies) on Linux/CPython 3.11; ``deploy/requirements-serve-gpu.txt`` the same for
``serve-gpu`` and ``tracing``, where ``onnxruntime-gpu`` takes the version and the dependencies of the
installed ``onnxruntime`` (the two are released together from one source tree; an environment never holds
both; move ONNX Runtime only to a version published as both). Every image carries the ``tracing`` extra so
that traces can be switched on by the ``OTEL_*`` variables alone (service/tracing.py); without them the
service runs untraced.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = {"serve": "requirements-serve.txt", "serve-gpu": "requirements-serve-gpu.txt"}
IMAGE_EXTRAS = ("tracing",)  # extras every image installs beside its serving extra
STAND_INS = {"onnxruntime-gpu": "onnxruntime"}  # wanted name -> the installed distribution that stands in for it
HEADER = (
    "# Pinned dependencies of castream's {extras} extras for the serving image (Linux, CPython 3.11).\n"
    "# Generated from the development environment by `python deploy/pin_requirements.py`; do not edit.\n"
)


def project_requirements(extra: str, pyproject: Path = ROOT / "pyproject.toml") -> list[Requirement]:
    """What an image for ``extra`` installs: the base dependencies, those of ``extra`` and of ``IMAGE_EXTRAS``."""
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project.get("optional-dependencies", {})
    wanted = [extra, *IMAGE_EXTRAS]
    missing = [name for name in wanted if name not in extras]
    if missing:
        raise ValueError(f"pyproject.toml has no extra {missing[0]!r}; expected one of {sorted(extras)}")
    texts = [*project["dependencies"], *(text for name in wanted for text in extras[name])]
    return [Requirement(text) for text in texts]


def _applies(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in extras | {""})


def closure(roots: list[Requirement]) -> dict[str, tuple[str, list[Requirement]]]:
    """Every distribution the roots need, by canonical name: (installed version, requirements that led to it)."""
    found: dict[str, tuple[str, list[Requirement]]] = {}
    extras_seen: dict[str, set[str]] = {}
    pending = [(req, set()) for req in roots]
    while pending:
        requirement, parent_extras = pending.pop()
        if not _applies(requirement, parent_extras):
            continue
        name = canonicalize_name(requirement.name)
        try:
            dist = distribution(STAND_INS.get(name, name))
        except PackageNotFoundError:
            raise SystemExit(f"{requirement.name} is a serving dependency but is not installed here") from None
        version, why = found.setdefault(name, (dist.version, []))
        why.append(requirement)
        new_extras = set(requirement.extras) - extras_seen.get(name, set())
        if name in extras_seen and not new_extras:
            continue
        extras_seen.setdefault(name, set()).update(requirement.extras)
        pending += [(Requirement(text), set(requirement.extras)) for text in dist.requires or []]
    return found


def render(extra: str) -> str:
    pins = closure(project_requirements(extra))
    lines = [f"{name}=={version}" for name, (version, _) in sorted(pins.items())]
    extras = " and ".join(f"`{name}`" for name in (extra, *IMAGE_EXTRAS))
    return HEADER.format(extras=extras) + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a file differs from what would be written")
    args = parser.parse_args(argv)
    stale = []
    for extra, filename in OUTPUTS.items():
        path, text = ROOT / "deploy" / filename, render(extra)
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.write_text(text)
    if stale:
        print(f"out of date with the installed packages: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
