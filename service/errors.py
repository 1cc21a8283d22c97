"""Errors answered as JSON ``{"detail": ..., "code": ...}``, never a bare 500 for bad input.

Under ``/v2`` (the Open Inference Protocol) the same errors keep their status and headers but take that
protocol's shape, ``{"error": "..."}``.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from service.requestid import with_request_id

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """An expected failure with its HTTP status, a stable machine code and a message for people."""

    def __init__(self, status: int, code: str, detail: object, headers: dict[str, str] | None = None):
        super().__init__(str(detail))
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}


def not_ready(retry_after_s: int) -> ServiceError:
    """503 ``starting``: the model is not loaded or not warmed up yet; ``Retry-After`` is ``CASTREAM_RETRY_AFTER_S``."""
    return ServiceError(503, "starting", "the model is loading; retry shortly", {"Retry-After": str(retry_after_s)})


class ErrorBody(BaseModel):
    detail: str | list | dict
    code: str
    request_id: str = Field(description="the request's id, as in the x-request-id header and the log")


HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}


V2_PREFIX = "/v2"


def error_response(
    status: int, code: str, detail: object, headers: dict[str, str] | None = None, request: Request | None = None
) -> JSONResponse:
    if request is not None and request.url.path.startswith(V2_PREFIX):
        message = detail if isinstance(detail, str) else f"{code}: {json.dumps(detail)}"
        return JSONResponse(with_request_id({"error": message}), status_code=status, headers=headers)
    return JSONResponse(with_request_id({"detail": detail, "code": code}), status_code=status, headers=headers)


def service_error_response(request: Request, exc: ServiceError) -> JSONResponse:
    """The answer to a :class:`ServiceError`, counted as a rejection by its code."""
    request.app.state.metrics.reject(exc.code)
    return error_response(exc.status, exc.code, exc.detail, exc.headers, request)


def install_handlers(app: FastAPI) -> None:
    """Route every exception through the JSON error shape."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return service_error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
        ]
        request.app.state.metrics.reject("invalid_request")
        # The inference protocol answers every malformed request with 400.
        status = 400 if request.url.path.startswith(V2_PREFIX) else 422
        return error_response(status, "invalid_request", errors, None, request)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return error_response(exc.status_code, code, exc.detail, getattr(exc, "headers", None), request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal error; see the service log", None, request)
