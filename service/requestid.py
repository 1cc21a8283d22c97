"""Request identity: every request carries an id, echoed in the ``x-request-id`` header and in error bodies.

A client's ``x-request-id`` is kept when it is at most ``MAX_LENGTH`` printable ASCII characters; otherwise
(or when absent) the service makes one (a version-4 UUID's hex). The id lives in a context variable for the request's
duration, so error handlers, the OIP ``id`` and log records (``RequestIdFilter``) can read it.
"""

from __future__ import annotations

import logging
import random
from contextvars import ContextVar
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "x-request-id"
MAX_LENGTH = 128
NONE = "-"  # what logs show outside a request

_current: ContextVar[str] = ContextVar("castream_request_id", default=NONE)


def current_request_id() -> str:
    """The id of the request being served, or ``"-"`` outside one."""
    return _current.get()


def accepted(value: bytes | None) -> str | None:
    """``value`` as an id if it is 1 to ``MAX_LENGTH`` printable ASCII characters (no spaces), else None."""
    if not value or len(value) > MAX_LENGTH or not all(0x21 <= b <= 0x7E for b in value):
        return None
    return value.decode("ascii")


# A version-4 UUID: these bits fixed (version 4, RFC 4122 variant), the other 122 random.
_UUID4_MASK, _UUID4_BITS = ~(0xF000 << 64 | 0xC000 << 48), 0x4000 << 64 | 0x8000 << 48


def new_request_id() -> str:
    """A version-4 UUID's hex, drawn from ``random`` (reseeded in every forked process) rather than ``uuid4``'s
    ``os.urandom``: that call lets go of the GIL on the event loop's thread, which then waits to get it back from
    the decoding threads. An id only needs to be unique, not unguessable."""
    return f"{random.getrandbits(128) & _UUID4_MASK | _UUID4_BITS:032x}"


def with_request_id(body: dict[str, Any]) -> dict[str, Any]:
    """An error body with the current request's id added."""
    return {**body, "request_id": current_request_id()}


class RequestIdMiddleware:
    """Pure ASGI, outermost: sets the id before anything else runs and adds the header to every response,
    the server-error handler's 500 included."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == HEADER.encode()), None)
        request_id = accepted(given) or new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        header = (HEADER.encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != header[0]]
                message["headers"] = [*headers, header]
            await send(message)

        token = _current.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _current.reset(token)


class RequestIdFilter(logging.Filter):
    """Gives every log record a ``request_id`` attribute (``"-"`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        return True


def document_header(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the ``x-request-id`` header to every response of every operation of an OpenAPI schema."""
    spec = {
        "description": "the request's id: the client's x-request-id when acceptable, else a new uuid4 hex",
        "schema": {"type": "string", "maxLength": MAX_LENGTH},
    }
    parameter = {
        "name": HEADER,
        "in": "header",
        "required": False,
        "description": f"the request's id, echoed back (at most {MAX_LENGTH} printable ASCII characters; "
        "anything else is replaced by a new one)",
        "schema": {"type": "string"},
    }
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            for response in operation.get("responses", {}).values():
                response.setdefault("headers", {})[HEADER] = spec
            parameters = operation.setdefault("parameters", [])
            if not any(p.get("name") == HEADER for p in parameters):
                parameters.append(parameter)
    return schema


def install(app: Any) -> None:
    """Make ``RequestIdMiddleware`` the outermost layer of a Starlette/FastAPI app and document its header."""
    build = app.build_middleware_stack
    app.build_middleware_stack = lambda: RequestIdMiddleware(build())
    openapi = app.openapi

    def openapi_with_header() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_header(openapi())
        return app.openapi_schema

    app.openapi = openapi_with_header
