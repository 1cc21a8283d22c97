"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.deps import LifecycleDep
from service.errors import ErrorBody
from service.lifecycle import Phase
from service.requestid import with_request_id
from service.schemas import Status

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Status, responses={503: {"model": ErrorBody}})
async def healthz(lifecycle: LifecycleDep) -> JSONResponse:
    """200 while the process can serve; 503 only when warm-up failed (restart it)."""
    phase = lifecycle.phase
    if phase is Phase.failed:
        return JSONResponse(
            with_request_id({"detail": "model warm-up failed; see the log", "code": "failed"}), status_code=503
        )
    return JSONResponse({"status": "alive"})


@router.get("/readyz", response_model=Status, responses={503: {"model": ErrorBody}})
async def readyz(lifecycle: LifecycleDep) -> JSONResponse:
    """200 once the model is loaded and warmed up; 503 while starting, draining or failed."""
    phase = lifecycle.phase
    if phase is not Phase.ready:
        return JSONResponse(with_request_id({"detail": f"not ready: {phase}", "code": str(phase)}), status_code=503)
    return JSONResponse({"status": "ready"})
