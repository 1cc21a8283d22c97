"""OpenTelemetry traces, off unless the standard ``OTEL_*`` variables ask for them.

On when ``OTEL_TRACES_EXPORTER`` names ``otlp`` or an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), unless ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``.
The SDK reads the rest itself (``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``, headers); ``OTEL_SERVICE_NAME``
defaults to ``castream``. Needs the ``tracing`` extra; without it the service logs a warning and runs untraced.

A W3C ``traceparent`` is continued. Each request gets a server span with children ``decode``, ``queue``,
``run`` and ``encode``; each batch is one ``batch`` span linked to every request in it. When off, the hooks
below return at their first line.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)
_tracer: Any = None  # an opentelemetry Tracer while tracing is on
_UNTRACED = nullcontext()
_model = ""


def wanted(env: dict[str, str] | os._Environ = os.environ) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporters = [e.strip() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()]
    if exporters:
        return "otlp" in exporters
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def from_environment() -> Any:
    """A TracerProvider exporting over OTLP/HTTP as the environment says, or None when tracing is off."""
    if not wanted():
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_* asks for traces but the tracing extra is not installed: pip install 'castream[tracing]'")
        return None
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or "castream"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def start(provider: Any) -> None:
    global _tracer
    _tracer = provider.get_tracer("castream") if provider is not None else None


def stop(provider: Any) -> None:
    """Flush and close ``provider``; turns the hooks off."""
    global _tracer
    _tracer = None
    if provider is not None:
        provider.shutdown()


def enabled() -> bool:
    """Whether traces are being recorded."""
    return _tracer is not None


def _monotonic_to_ns(monotonic: float) -> int:
    return time.time_ns() - int((time.monotonic() - monotonic) * 1e9)


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[None]:
    """A child of the current request's span around the block (nothing when tracing is off)."""
    if _tracer is None:
        yield
        return
    with _tracer.start_as_current_span(name, attributes=attributes):
        yield


def current_context() -> Any:
    """The current span's context (to link a batch to its requests), or None."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


def record_wait(enqueued: float, taken: float | None, images: int) -> None:
    """The ``queue`` (enqueued to taken) and ``run`` (taken to now) children, from monotonic times."""
    if _tracer is None or taken is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attribute("castream.images", images)
    now = time.time_ns()
    queue = _tracer.start_span("queue", start_time=_monotonic_to_ns(enqueued), attributes={"castream.images": images})
    queue.end(end_time=_monotonic_to_ns(taken))
    _tracer.start_span("run", start_time=_monotonic_to_ns(taken)).end(end_time=now)


def batch_span(size: int, requests: list[Any]) -> AbstractContextManager[None]:
    """One span per batch, a root of its own, linked to every request whose images it runs (a shared do-nothing
    context when tracing is off)."""
    return _UNTRACED if _tracer is None else _batch_span(size, requests)


@contextmanager
def _batch_span(size: int, requests: list[Any]) -> Iterator[None]:
    from opentelemetry import context as otel_context
    from opentelemetry.trace import Link

    unique = {(c.trace_id, c.span_id): c for c in requests if c is not None}  # a request once, however many images
    links = [Link(c) for c in unique.values()]
    attributes = {"castream.batch_size": size, "castream.model": _model}
    with _tracer.start_as_current_span("batch", context=otel_context.Context(), links=links, attributes=attributes):
        yield


class TracingMiddleware:
    """Pure ASGI: the request's server span, continuing a W3C ``traceparent``; its trace id goes to the scope."""

    def __init__(self, app: ASGIApp, model: str = ""):
        self.app, self.model = app, model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _tracer is None:
            await self.app(scope, receive, send)
            return
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        parent = TraceContextTextMapPropagator().extract(carrier)
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        name = f"{scope['method']} {scope['path']}"
        with _tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER) as request_span:
            scope.setdefault("state", {})["trace_id"] = format(request_span.get_span_context().trace_id, "032x")
            try:
                await self.app(scope, receive, send_status)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    request_span.update_name(f"{scope['method']} {route}")
                    request_span.set_attribute("http.route", route)
                request_span.set_attribute("http.request.method", scope["method"])
                request_span.set_attribute("http.response.status_code", status)
                request_span.set_attribute("castream.model", self.model)
                if status >= 500:
                    from opentelemetry.trace import Status, StatusCode

                    request_span.set_status(Status(StatusCode.ERROR))


def install(app: Any, provider: Any, model: str = "") -> None:
    """Turn tracing on for ``app`` with ``provider`` (None: off, nothing installed)."""
    global _model
    if provider is None:
        return
    start(provider)
    _model = model
    build = app.build_middleware_stack
    app.build_middleware_stack = lambda: TracingMiddleware(build(), model)
