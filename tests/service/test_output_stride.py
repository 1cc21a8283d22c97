"""The model file's output stride: read from its metadata (older files have none: 32) and listed by /v1/model."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.metadata import ModelError, parse_metadata
from tests.service.servicetools import build_model, save_model


def _props(**metadata: str | None) -> dict[str, str]:
    return {p.key: p.value for p in build_model(**metadata).metadata_props}


def test_a_file_without_an_output_stride_reads_as_32(client: TestClient) -> None:
    assert "output_stride" not in _props()  # as every file exported before the property existed
    assert parse_metadata(_props(), "old.onnx").output_stride == 32
    assert client.get("/v1/model").json()["output_stride"] == 32


def test_the_recorded_output_stride_is_read_and_listed(app_client, tmp_path: Path) -> None:
    assert parse_metadata(_props(output_stride="16"), "fine.onnx").output_stride == 16
    client = app_client(save_model(tmp_path / "fine.onnx", output_stride="16"))
    assert client.get("/v1/model").json()["output_stride"] == 16


@pytest.mark.parametrize(
    "value, reason",
    [
        ("8", r"metadata 'output_stride' is 8; expected one of \(32, 16\)"),
        ("x", "metadata property 'output_stride' is invalid"),
    ],
)
def test_a_bad_output_stride_is_refused_by_name(value: str, reason: str) -> None:
    with pytest.raises(ModelError, match=rf"bad.onnx: {reason}"):
        parse_metadata(_props(output_stride=value), "bad.onnx")
