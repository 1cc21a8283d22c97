"""int8 agreement read back from the export's metadata, and the speed timed side by side."""

from __future__ import annotations

import pytest

from benchmarks.int8 import compare, int8_verification
from tests.benchmarks.conftest import INT8_CHECKS
from tests.service.servicetools import save_model


def test_compare_reads_the_agreement_and_times_both_models(tiny_model, tiny_int8_model) -> None:
    report = compare(tiny_model, tiny_int8_model, batch_size=2, budget_s=0)
    assert report["agreement"] == {key: INT8_CHECKS[key] for key in ("images", "top1", "peak", "correlation")}
    assert report["accuracy"] == {"fp32": 0.9, "int8": 0.89} and report["speedup_at_export"] == 2.5
    assert [t["batch_size"] for t in report["timings"]] == [1, 2]
    for timing in report["timings"]:
        assert timing["rounds"] >= 3 and timing["int8_over_fp32"] > 0


def test_only_an_int8_export_with_its_checks_is_accepted(tiny_model, tmp_path) -> None:
    with pytest.raises(ValueError, match="is a fp32 model"):
        int8_verification(tiny_model)
    unchecked = save_model(tmp_path / "unchecked.onnx", precision="int8")
    with pytest.raises(ValueError, match="records no int8 checks"):
        int8_verification(unchecked)
