"""One uvicorn server for the app, draining gracefully on SIGTERM: ``python -m service``'s process, or one of
its workers (``service.supervisor``)."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from types import FrameType

import uvicorn
from fastapi import FastAPI

from service.app import create_app
from service.fleet import Slot
from service.settings import Settings

log = logging.getLogger("service")


class DrainingServer(uvicorn.Server):
    """On SIGTERM, turn /readyz to 503 and keep serving for ``drain_delay_s`` (so load balancers stop
    sending traffic), then let uvicorn stop accepting, finish in-flight requests and run the shutdown."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_delay_s: float):
        super().__init__(config)
        self.app, self.drain_delay_s, self._draining = app, drain_delay_s, False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: it runs between two bytecodes of whatever the main thread was doing, so it must take
        # no lock that thread may hold (the drain only writes the phase).
        lifecycle = self.app.state.lifecycle
        if sig != signal.SIGTERM or self._draining or self.drain_delay_s <= 0:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        lifecycle.drain()
        log.info("SIGTERM: draining for %.1f s before shutting down", self.drain_delay_s)
        timer = threading.Timer(self.drain_delay_s, super().handle_exit, args=(sig, frame))
        timer.daemon = True
        timer.start()


def build(settings: Settings, slot: Slot | None = None) -> DrainingServer:
    """The server for ``settings`` (with ``slot``, as one of several worker processes)."""
    app = create_app(settings, slot)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # In JSON, uvicorn's loggers hand their records to the root handler, and the access line is ours.
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        access_log=settings.access_log and settings.log_format == "text",
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
        lifespan="on",
    )
    return DrainingServer(config, app, settings.drain_delay_s)


def run(server: DrainingServer, sockets: list[socket.socket] | None = None) -> int:
    """Serve until stopped (on ``sockets`` already bound, else on the configured host and port): 0 once
    stopped, 3 if it never started. A failed lifespan start-up exits with uvicorn's status 3 itself."""
    try:
        server.run(sockets)
    except KeyboardInterrupt:
        # uvicorn re-raises the signal it handled once it has shut down; SIGINT is a normal way to stop.
        pass
    return 0 if server.started else 3
