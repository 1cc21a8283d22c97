"""The classify route's query plan validates as FastAPI does: the same values, the same errors, the same schema."""

from __future__ import annotations

import pytest
from fastapi.dependencies.utils import request_params_to_args
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import QueryParams

from service.app import create_app
from service.routes.classify import QUERY

VALID = [
    "",
    "top_k=1",
    "top_k=3&attention=none",
    "explain=a&explain=b&class_maps=true",
    "overlay_on=image&overlay_size=16",
    "overlay_format=webp&embedding=1",
    "unknown=1&top_k=1000",
    "explain=",
]
INVALID = ["top_k=0", "top_k=x&attention=bad", "overlay_size=8192000", "class_maps=maybe&overlay_format=gif"]


@pytest.mark.parametrize("query", VALID)
def test_values_match_fastapi(query: str) -> None:
    params = QueryParams(query)
    values, errors = request_params_to_args(QUERY.fields, params)
    assert not errors and QUERY(params) == values


@pytest.mark.parametrize("query", INVALID)
def test_errors_match_fastapi(query: str) -> None:
    params = QueryParams(query)
    with pytest.raises(RequestValidationError) as raised:
        QUERY(params)
    assert raised.value.errors() == request_params_to_args(QUERY.fields, params)[1] != []


def test_schema_lists_the_query_once() -> None:
    schema = create_app().openapi()
    names = [p["name"] for p in schema["paths"]["/classify"]["post"]["parameters"]]
    assert [n for n in names if n != "x-request-id"] == [f.alias for f in QUERY.fields]
