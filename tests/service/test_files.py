"""A model file the service's user cannot read gets an error naming its owner, its mode and that user."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from service.settings import SettingsError, load_settings

NOBODY = 65534


def _start_as(uid: int, model: Path) -> str:
    """Loads the settings in a child process that runs as ``uid``; returns the error it met, or ''."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the interpreter is loaded already: the child only drops to the other user
        message = ""
        try:
            os.setgid(uid)
            os.setuid(uid)
            load_settings(model_path=model)
        except SettingsError as error:
            message = str(error)
        except BaseException as error:
            message = f"unexpected {error!r}"
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        message = pipe.read()
    os.waitpid(child, 0)
    return message


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")  # CI runs as root
def test_an_unreadable_model_is_refused_with_owner_mode_and_user() -> None:
    folder = Path(tempfile.mkdtemp(prefix="castream-mode-"))  # pytest's own folders are private to root
    folder.chmod(0o755)
    model = folder / "castream.onnx"
    model.write_bytes(b"only its mode matters here")
    model.chmod(0o600)
    try:
        message = _start_as(NOBODY, model)
        assert "CASTREAM_MODEL_PATH" in message and "exists but uid 65534" in message, message
        assert "owned by uid 0 (root)" in message and "mode 0600" in message, message
        model.chmod(0o644)
        assert _start_as(NOBODY, model) == ""  # readable now: the settings load
    finally:
        shutil.rmtree(folder)
