"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.errors import ErrorBody
from service.runtime import Phase
from service.schemas import Status

router = APIRouter(tags=["health"])


def _phase(request: Request) -> Phase:
    runtime = getattr(request.app.state, "runtime", None)
    return runtime.phase if runtime is not None else Phase.starting


@router.get("/healthz", response_model=Status, responses={503: {"model": ErrorBody}})
async def healthz(request: Request) -> JSONResponse:
    """200 while the process can serve; 503 only when warm-up failed (restart it)."""
    phase = _phase(request)
    if phase is Phase.failed:
        return JSONResponse({"detail": "model warm-up failed; see the log", "code": "failed"}, status_code=503)
    return JSONResponse({"status": "alive"})


@router.get("/readyz", response_model=Status, responses={503: {"model": ErrorBody}})
async def readyz(request: Request) -> JSONResponse:
    """200 once the model is loaded and warmed up; 503 while starting, draining or failed."""
    phase = _phase(request)
    if phase is not Phase.ready:
        return JSONResponse({"detail": f"not ready: {phase}", "code": str(phase)}, status_code=503)
    return JSONResponse({"status": "ready"})
