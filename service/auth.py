"""Optional bearer-token check: when ``CASTREAM_API_KEY`` is set, ``/classify`` and ``/v2/.../infer`` require it."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import ServiceError

bearer = HTTPBearer(auto_error=False, description="needed only when the service sets CASTREAM_API_KEY")


def require_api_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    key = request.app.state.settings.api_key
    if key is None:  # the dependency is only installed with a key; this keeps it safe anywhere
        return
    given = credentials.credentials.encode() if credentials is not None else b""
    if not secrets.compare_digest(given, key.get_secret_value().encode()):
        reason = "is wrong" if credentials is not None else "is missing"
        raise ServiceError(
            401,
            "unauthorized",
            f"the bearer token {reason}; send 'Authorization: Bearer <CASTREAM_API_KEY>'",
            {"WWW-Authenticate": "Bearer"},
        )
