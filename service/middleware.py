"""Request count, duration and in-flight gauge for every HTTP request, labelled by route template."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics


class MetricsMiddleware:
    """Plain ASGI middleware (no per-request task), so it costs microseconds."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics
        # The labelled series of each (route, status) answered so far: looked up once, not on every request.
        self._series: dict[tuple[str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            # The route template, not the raw path, keeps label values bounded.
            route = getattr(scope.get("route"), "path", "unmatched")
            series = self._series.get((route, status))
            if series is None:
                series = self._series[route, status] = (
                    self.metrics.requests.labels(route=route, status=str(status)),
                    self.metrics.request_seconds.labels(route=route),
                )
            series[0].inc()
            series[1].observe(time.perf_counter() - start)
