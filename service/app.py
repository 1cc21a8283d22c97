"""The FastAPI application factory: ``uvicorn service.app:create_app --factory``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline

from service import direct, tracing
from service.auth import require_api_key
from service.contract import VERSION
from service.errors import install_handlers
from service.fleet import Slot
from service.lifecycle import Lifecycle
from service.logs import install_access_log
from service.metrics import Metrics
from service.middleware import MetricsMiddleware
from service.requestid import install as install_request_ids
from service.routes import GUARDED, OPEN, classify
from service.settings import Settings, load_settings

DESCRIPTION = (
    "Interpretable image classification: each prediction comes with the CA-Stream attention map. "
    "Images from concurrent requests are batched through ONNX Runtime."
)


def create_app(settings: Settings | None = None, slot: Slot | None = None) -> FastAPI:
    """Build the app; the model is loaded when its lifespan starts. Settings default to the environment.

    ``slot``: this process is one of several workers of ``python -m service`` (see ``service.supervisor``).
    """
    settings = settings or load_settings()
    metrics = Metrics(slot)
    lifecycle = Lifecycle(settings, metrics, slot)
    tracer_provider = tracing.from_environment()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await lifecycle.start()
            yield
        finally:
            await lifecycle.stop()
            tracing.stop(tracer_provider)

    # Swagger UI and ReDoc from assets inside the service (/static-offline-docs), not a CDN: /docs works offline.
    app = FastAPIOffline(title="castream", version=VERSION, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings, app.state.metrics, app.state.lifecycle = settings, metrics, lifecycle
    install_handlers(app)
    # The token check joins the routes (and so the OpenAPI schema) only when a key is configured.
    guard = [Depends(require_api_key)] if settings.api_key is not None else []
    for router in GUARDED:
        app.include_router(router, dependencies=guard)
    for router in OPEN:
        app.include_router(router)
    route = next(r for r in classify.router.routes if getattr(r, "path", None) == direct.PATH)
    app.add_middleware(direct.DirectClassify, lifecycle=lifecycle, route=route)  # inside the metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if settings.log_format == "json":
        install_access_log(app)
    tracing.install(app, tracer_provider, settings.model_path.stem)  # nothing when OTEL_* asks for no traces
    install_request_ids(app)  # outermost, so even the server-error handler's 500 carries the id
    return app
