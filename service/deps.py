"""Dependency aliases shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.errors import not_ready
from service.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise not_ready(request.app.state.settings.retry_after_s)
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
