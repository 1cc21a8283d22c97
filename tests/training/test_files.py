"""Atomic writes: the whole file or the previous one, never a part, and no temporary file left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from training.files import atomic_write, umask, write_text


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


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_a_written_file_gets_the_mode_open_would_give_it(tmp_path: Path, mask: int) -> None:
    previous = os.umask(mask)
    try:
        with open(tmp_path / "plain.bin", "wb") as file:
            file.write(b"x")
        write_text(tmp_path / "atomic.txt", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "atomic.txt").stat().st_mode) == stat.S_IMODE(
        (tmp_path / "plain.bin").stat().st_mode
    )
    assert stat.S_IMODE((tmp_path / "atomic.txt").stat().st_mode) == 0o666 & ~mask


def test_umask_is_read_without_changing_it() -> None:
    previous = os.umask(0o027)
    try:
        assert umask() == 0o027
        assert umask() == 0o027
    finally:
        os.umask(previous)
