"""``python -m service``: validate settings, then serve with uvicorn and drain gracefully on SIGTERM."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType

import uvicorn
from fastapi import FastAPI

from service.app import create_app
from service.logs import configure as configure_logging
from service.settings import SettingsError, load_settings

log = logging.getLogger("service")


class DrainingServer(uvicorn.Server):
    """On SIGTERM, turn /readyz to 503 and keep serving for ``drain_delay_s`` (so load balancers stop
    sending traffic), then let uvicorn stop accepting, finish in-flight requests and run the shutdown."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_delay_s: float):
        super().__init__(config)
        self.app, self.drain_delay_s, self._draining = app, drain_delay_s, False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
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


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        log.error("%s", exc)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
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
    server = DrainingServer(config, app, settings.drain_delay_s)
    try:
        server.run()
    except KeyboardInterrupt:
        # uvicorn re-raises the signal it handled once it has shut down; SIGINT is a normal way to stop.
        pass
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
