"""The images' HEALTHCHECK script follows /readyz of a real `python -m service`, draining included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from tests.deploy.deploytools import DEPLOY
from tests.service.servicetools import LiveServer, free_port

SCRIPT = DEPLOY / "healthcheck.py"


def healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CASTREAM_PORT": str(port)}
    return subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)


def test_healthy_when_ready_unhealthy_while_draining(live_server: Callable[..., LiveServer]) -> None:
    server = live_server(CASTREAM_DRAIN_DELAY_S="10")
    assert healthcheck(server.port).returncode == 0
    server.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 4
    while healthcheck(server.port).returncode == 0:  # the drain starts within moments of the signal
        assert time.monotonic() < deadline, "still healthy after SIGTERM"
        time.sleep(0.05)
    assert server.process.poll() is None, "the unhealthy answer came from the draining server, not a dead one"
    result = healthcheck(server.port)
    assert result.returncode == 1 and "503" in result.stderr


def test_unhealthy_when_nothing_listens() -> None:
    result = healthcheck(free_port())
    assert result.returncode == 1 and "refused" in result.stderr.lower()
