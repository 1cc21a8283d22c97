"""The contract's table of outputs drives export: the graph's outputs, verification's records and the Triton
configuration list exactly the table's outputs of the file's pooling, for a CA and a GAP export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from export import metadata
from export.pipeline import ExportReport
from export.triton import write_repository
from service.contract import output_names, output_spec
from tests.deploy.tritontools import read_config


@pytest.fixture
def exports(ca_export: ExportReport, gap_export: ExportReport) -> dict[str, ExportReport]:
    return {"ca": ca_export, "gap": gap_export}


@pytest.mark.parametrize("pooling", ["ca", "gap"])
def test_graph_verification_and_triton_list_exactly_the_tables_outputs(
    exports: dict[str, ExportReport], tmp_path: Path, pooling: str
) -> None:
    report, names = exports[pooling], list(output_names(pooling))
    graph = onnx.load(str(report.path)).graph
    assert [value.name for value in graph.output] == names
    verification = metadata.read(report.path)["verification"]
    assert list(verification["tolerance"]) == names
    assert verification["tolerance"] == {name: output_spec(name).tolerance.fp32 for name in names}
    for parity in report.parity:
        assert list(parity.errors) == list(parity.scales) == names
        for name, error in parity.errors.items():
            assert np.isfinite(error) and error <= output_spec(name).tolerance.fp32 * parity.scales[name]
    folder = write_repository(report.path, tmp_path / "triton")
    assert [tensor.name for tensor in read_config(folder).output] == names


def test_int8_keeps_the_outputs_the_table_says_float(int8_export: ExportReport) -> None:
    proto = onnx.load(str(int8_export.path))
    producers = {output: node for node in proto.graph.node for output in node.output}
    for name in output_names("ca"):
        quantised = producers[name].op_type in ("DequantizeLinear", "QuantizeLinear")
        assert quantised is not output_spec(name).float_in_int8, name
