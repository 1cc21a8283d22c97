"""Fuzz every operation of the OpenAPI schema: whatever arrives, the service never answers 5xx."""

from __future__ import annotations

import time

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode
from schemathesis.python import asgi

from service.app import create_app
from tests.service.servicetools import make_settings

# Deterministic and bounded: the same examples on every run, a few seconds in all.
BOUNDED = settings(
    max_examples=30, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
# No 5xx, and every answer is documented: status code, content type and body schema. Schema-valid bytes that
# are not an image are refused (415), so "positive data acceptance" does not apply to /classify.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def app(model_path):
    return create_app(make_settings(model_path))


@pytest.fixture(scope="module")
def schema(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture
def api_schema(app, schema):
    """The schema, with the app started and warm for this test.

    Schemathesis' pytest plugin ends the app's lifespan when each test ends, and its transport starts it again
    on the next request; the model then warms up in the background, so without this wait the first requests
    of every test but the first would race the warm-up and meet 503 ``starting``.
    """
    with asgi.get_client(app) as client:  # starts the lifespan unless it is running
        deadline = time.monotonic() + 20
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the app never became ready"
            time.sleep(0.02)
    return schema


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_operation_answers_5xx(api_schema, mode: GenerationMode) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/classify", "/healthz", "/readyz", "/metrics", "/v1/model", "/"}
    if mode is GenerationMode.NEGATIVE:  # only /classify has inputs that can be made invalid
        operations = [op for op in operations if op.path == "/classify"]
    seen: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @BOUNDED
        def fuzz(case) -> None:
            response = case.call()  # the app is warm for the whole test: every answer is judged
            case.validate_response(response, checks=CHECKS)
            seen.append(response.status_code)

        fuzz()
    assert seen and max(seen) < 500
