"""Atomic writes: the whole file or the previous one, never a part, and no temporary file left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.files import atomic_write


def test_a_write_replaces_the_file_only_when_it_completes(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "file.bin"
    with atomic_write(path) as file:
        file.write(b"first")
    assert path.read_bytes() == b"first"
    with pytest.raises(RuntimeError, match="interrupted"), atomic_write(path) as file:
        file.write(b"second, half")
        raise RuntimeError("interrupted")
    assert path.read_bytes() == b"first"
    assert [p.name for p in path.parent.iterdir()] == ["file.bin"]
