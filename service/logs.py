"""Logging: plain text (the default) or one JSON object per line (``CASTREAM_LOG_FORMAT=json``).

In JSON, every record carries its time, level, logger, message and request id, and ``AccessLogMiddleware``
writes one ``service.access`` record per request (probes and metrics left out) with its route, status,
images, bytes in and out, trace id and stage timings.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import timings
from service.requestid import RequestIdFilter, current_request_id

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})
access_log = logging.getLogger("service.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per record; an access record's fields are merged in at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or current_request_id(),
        }
        entry.update(getattr(record, "access", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str, fmt: str) -> None:
    """Root logging to stderr in ``fmt`` ("text" or "json"), every record given its request id."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def trace_id(scope: Scope) -> str | None:
    """The trace id of a W3C ``traceparent`` header (``00-<32 hex>-<16 hex>-<2 hex>``), if well formed."""
    for name, value in scope["headers"]:
        if name == b"traceparent":
            parts = value.decode("latin-1").split("-")
            if len(parts) == 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
                try:
                    int(parts[1], 16)
                except ValueError:
                    return None
                return parts[1].lower()
    return None


class AccessLogMiddleware:
    """Pure ASGI: one access record per request, written once the response has been sent."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in QUIET_PATHS:
            await self.app(scope, receive, send)
            return
        start, status, sizes = time.perf_counter(), 500, {"in": 0, "out": 0}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                sizes["in"] += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sizes["out"] += len(message.get("body", b""))
            await send(message)

        stages, token = timings.begin()
        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            timings.end(token)
            total_ms = (time.perf_counter() - start) * 1000
            route = getattr(scope.get("route"), "path", None)
            fields = {
                "trace_id": scope.get("state", {}).get("trace_id") or trace_id(scope),
                "method": scope["method"],
                "path": scope["path"],
                "route": route,
                "status": status,
                "images": int(stages.pop("images", 0)),
                "bytes_in": sizes["in"],
                "bytes_out": sizes["out"],
                **{key: round(value, 3) for key, value in stages.items()},
                "total_ms": round(total_ms, 3),
            }
            access_log.info("%s %s %d", scope["method"], route or scope["path"], status, extra={"access": fields})


def install_access_log(app: Any) -> None:
    """Wrap a Starlette/FastAPI app's middleware stack (server-error handler included) in the access log."""
    build = app.build_middleware_stack
    app.build_middleware_stack = lambda: AccessLogMiddleware(build())
