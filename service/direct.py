"""``POST /classify`` without the framework's per-request work, for the requests that need none of it.

FastAPI matches the route, resolves the dependencies and validates the query through pydantic on every request:
on a null model that was about a fifth of the event loop's time (docs/service.md, "The service's own ceiling"). A
request whose query is plainly valid (each parameter known, given once, with a value FastAPI would take
as it stands), whose model is warm and whose bearer token (when one is configured) is right, goes straight to
the same pipeline through the same codec here. Everything else (a value to convert or to refuse, a missing or
wrong token, the model still loading, any other path) goes on to FastAPI, which answers it as before: the answer
to any request is the route's answer, only reached with less work.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.codecs.classify import OVERLAY_SIDES, TOP_K_MAX, classify_codec
from service.errors import ServiceError, service_error_response
from service.lifecycle import Lifecycle
from service.schemas import AttentionMode, OverlayArea, OverlayFormat

PATH = "/classify"


class Unsure(ValueError):
    """A query this module leaves to FastAPI, to convert or to refuse in its own words."""


def _count(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        # Plain decimal digits only: signs, spaces and leading zeros are FastAPI's to judge.
        if not (text.isascii() and text.isdigit() and text[0] != "0" and len(text) <= 6):
            raise Unsure(text)
        value = int(text)
        if not low <= value <= high:
            raise Unsure(text)
        return value

    return parse


def _flag(text: str) -> bool:
    if text == "true":
        return True
    if text == "false":
        return False
    raise Unsure(text)


def _choice(enum: Any) -> Any:
    values = {member.value: member for member in enum}

    def parse(text: str) -> Any:
        if text not in values:
            raise Unsure(text)
        return values[text]

    return parse


PARAMETERS = {
    "top_k": _count(1, TOP_K_MAX),
    "attention": _choice(AttentionMode),
    "class_maps": _flag,
    "overlay_on": _choice(OverlayArea),
    "overlay_size": _count(*OVERLAY_SIDES),
    "overlay_format": _choice(OverlayFormat),
    "embedding": _flag,
}
REPEATABLE = "explain"


def parse_query(query: bytes) -> dict[str, Any] | None:
    """The keyword arguments of ``classify_codec`` for a plainly valid query string; None for any other."""
    arguments: dict[str, Any] = {}
    try:
        for name, text in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if name == REPEATABLE:
                arguments.setdefault(name, []).append(text)
            elif name in PARAMETERS and name not in arguments:
                arguments[name] = PARAMETERS[name](text)
            else:
                return None  # unknown or repeated
    except Unsure:
        return None
    return arguments


class DirectClassify:
    """Pure ASGI, inside the metrics middleware: answers the plainly valid ``POST /classify`` requests of a warm
    model itself; passes everything else on. ``route`` is the FastAPI route, which labels the metrics and logs."""

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle, route: Any):
        self.app, self.lifecycle, self.route = app, lifecycle, route
        key = lifecycle.settings.api_key
        self.token = None if key is None else key.get_secret_value().encode()

    def _authorised(self, scope: Scope) -> bool:
        if self.token is None:
            return True
        given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        scheme, _, token = given.partition(b" ")
        return scheme.lower() == b"bearer" and secrets.compare_digest(token, self.token)

    def plain(self, scope: Scope) -> dict[str, Any] | None:
        """The query's arguments when this request is one to answer here (see the module), else None."""
        if (
            scope["type"] != "http"
            or scope["path"] != PATH
            or scope["method"] != "POST"
            or scope.get("root_path")
            or self.lifecycle.serving is None
            or not self._authorised(scope)
        ):
            return None
        return parse_query(scope["query_string"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = self.plain(scope)
        serving = self.lifecycle.serving
        if query is None or serving is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        request = Request(scope, receive)
        try:
            response = await serving.handle(request, classify_codec(serving, **query))
        except ServiceError as exc:
            response = service_error_response(request, exc)
        await response(scope, receive, send)
