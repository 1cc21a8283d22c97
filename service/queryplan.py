"""An endpoint's query parameters, validated as FastAPI validates them at a fraction of the cost.

FastAPI works out again on every request what it could know once about each declared query parameter (its alias,
whether it is a list, whether it is a model), which on ``POST /classify``'s eight parameters costs about a tenth of
a millisecond of CPU per request. A :class:`QueryPlan` reads the endpoint's parameters once and validates each value
with the same field and location; a request with any invalid value has its errors named by FastAPI's own function,
so the 422 answer is the one FastAPI gives.
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from typing import Any

from fastapi.dependencies.utils import field_annotation_is_sequence, get_dependant, request_params_to_args
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.datastructures import QueryParams


class QueryPlan:
    """The query parameters of ``endpoint`` (plain values or lists of them, each under its own name or alias)."""

    def __init__(self, endpoint: Callable[..., Any]):
        self.fields = get_dependant(path="", call=endpoint).query_params
        self._steps = []
        for field in self.fields:
            info, annotation = field.field_info, field.field_info.annotation
            model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
            if model or info.validation_alias is not None or info.is_required() or info.validate_default:
                raise ValueError(f"query parameter {field.name!r} of {endpoint.__name__} is not a plain optional one")
            self._steps.append((field.name, field.alias, field_annotation_is_sequence(annotation), field))

    def __call__(self, params: QueryParams) -> dict[str, Any]:
        """The endpoint's query arguments by name; FastAPI's ``RequestValidationError`` for any invalid value."""
        values: dict[str, Any] = {}
        for name, alias, many, field in self._steps:
            raw = params.getlist(alias) if many else params.get(alias)
            if raw is None or (many and not raw):
                values[name] = deepcopy(field.default)
                continue
            value, errors = field.validate(raw, values, loc=("query", alias))
            if errors:
                raise RequestValidationError(request_params_to_args(self.fields, params)[1])
            values[name] = value
        return values
