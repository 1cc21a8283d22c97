"""docs/deploy.md names only files that exist, and documents every deployment file."""

from __future__ import annotations

import re

from tests.deploy.deploytools import DEPLOY, REPO

GUIDE = REPO / "docs" / "deploy.md"


def test_every_path_in_the_guide_exists() -> None:
    pattern = r"(?<![\w/.-])((?:deploy|docs|tests)/[\w./*-]*[\w*]|docker-compose\.yml)"
    named = set(re.findall(pattern, GUIDE.read_text()))
    assert named
    missing = sorted(path for path in named if not any(REPO.glob(path)))
    assert missing == []


def test_the_guide_covers_every_deployment_file() -> None:
    text = GUIDE.read_text()
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    undocumented = []
    for path in files:
        relative = path.relative_to(REPO).as_posix()
        # A file counts as documented when the guide names it or a folder that holds it.
        folders = [relative.rsplit("/", n)[0] + "/" for n in range(1, relative.count("/"))]
        if relative not in text and not any(folder in text for folder in folders):
            undocumented.append(relative)
    assert undocumented == []
