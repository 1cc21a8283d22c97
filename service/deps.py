"""How routes reach the service: ``ServingDep`` (the warm model; 503 until it exists) and ``LifecycleDep``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.errors import not_ready
from service.lifecycle import Lifecycle
from service.serving import Serving


async def get_lifecycle(request: Request) -> Lifecycle:
    return request.app.state.lifecycle


async def get_serving(request: Request) -> Serving:
    """The serving object once the model is warm; 503 ``starting`` (with ``Retry-After``) before."""
    lifecycle: Lifecycle = request.app.state.lifecycle
    serving = lifecycle.serving
    if serving is None:
        raise not_ready(lifecycle.settings.retry_after_s)
    return serving


LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]
ServingDep = Annotated[Serving, Depends(get_serving)]
