"""Files written whole or not at all: a temporary file in the same folder, flushed to disk, then renamed.

A crash at any moment leaves either the previous file or the new one, never half of one; concurrent
writers (DDP ranks) each write a temporary file of their own and the last rename wins. The file gets the
mode ``open()`` would give a new file (0666 less the umask, 0644 typically), not the temporary file's
private 0600: a model or checkpoint is meant to be read by other users, containers included.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def umask() -> int:
    """The process's umask, read without changing it where Linux reports it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)  # elsewhere the only way to read it is to set it, briefly
    os.umask(current)
    return current


@contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Yields a binary file to write; on leaving the block without an error it replaces ``path``.

    On an error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            os.fchmod(file.fileno(), 0o666 & ~umask())
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path) as file:
        file.write(text.encode())
    return Path(path)
