"""Why a model file that exists cannot be opened: owner, mode and the user the service runs as."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def _user(uid: int) -> str:
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError):  # no passwd entry: containers often run as a bare uid
        return f"uid {uid}"


def unreadable(path: Path) -> str | None:
    """None when this process can read ``path``; otherwise a message naming who owns it, its mode and who we are."""
    if os.access(path, os.R_OK):
        return None
    info = path.stat()
    return (
        f"model file {str(path)!r} exists but {_user(os.geteuid())}, which the service runs as, cannot read it: it "
        f"is owned by {_user(info.st_uid)} (gid {info.st_gid}) with mode {stat.S_IMODE(info.st_mode):04o}. "
        "Make it readable (`chmod a+r`), or re-export it with `make export`, which writes files others can read"
    )
