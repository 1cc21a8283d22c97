"""The GPU section measures only with a CUDA device and ONNX Runtime's CUDA provider, and says why not."""

from __future__ import annotations

import onnxruntime as ort
import torch

from benchmarks.gpu import CUDA, describe, measure, plan


def test_plan_needs_a_device_and_the_cuda_provider() -> None:
    assert plan(["CPUExecutionProvider"], 0) == (False, "no CUDA device on this machine")
    measurable, reason = plan(["CPUExecutionProvider"], 1)
    assert not measurable and "onnxruntime-gpu" in reason
    assert plan([CUDA, "CPUExecutionProvider"], 1) == (True, "")


def test_measure_follows_the_plan_for_this_machine(tiny_model) -> None:
    measurable, reason = plan(ort.get_available_providers(), torch.cuda.device_count())
    result = measure(tiny_model, budget_s=0)
    assert result["measured"] is measurable
    if measurable:
        assert [p["batch_size"] for p in result["sweeps"]["fp32 (CUDA)"]] == [1, 2, 4, 8, 16, 32]
    else:
        assert result == {"measured": False, "reason": reason} and "sweeps" not in result
    assert ("none" in describe()) is (not torch.cuda.is_available())
