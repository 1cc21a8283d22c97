"""The precision policy: bf16 autocast only where the hardware computes in bf16 natively."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training import precision
from training.engine import TrainingContext
from training.fit import parse_args

CPU = torch.device("cpu")


@pytest.fixture(params=[True, False], ids=["native-bf16", "no-bf16"])
def native(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: request.param)
    return request.param


def test_auto_is_bf16_only_on_a_cpu_that_has_it(native: bool) -> None:
    assert precision.autocast_dtype("auto", CPU) == (torch.bfloat16 if native else None)
    assert precision.autocast_dtype("fp32", CPU) is None


def test_explicit_bf16_is_honoured_everywhere_but_warned_about_where_emulated(
    native: bool, caplog: pytest.LogCaptureFixture
) -> None:
    precision._warn_emulated_bf16.cache_clear()
    assert precision.autocast_dtype("bf16", CPU) == torch.bfloat16
    assert ("emulated" in caplog.text) is not native


def test_the_training_context_autocasts_as_the_policy_says(native: bool) -> None:
    context = TrainingContext(CPU, precision="auto")
    with context.autocast():
        y = torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4))
    assert y.dtype == (torch.bfloat16 if native else torch.float32)
    assert precision.describe(context.dtype) == ("bf16" if native else "fp32")


def test_cuda_prefers_bf16_and_falls_back_to_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert precision.autocast_dtype("auto", cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert precision.autocast_dtype("auto", cuda) == torch.float16
    with pytest.raises(ValueError, match="no bf16"):
        precision.autocast_dtype("bf16", cuda)


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        precision.autocast_dtype("fp8", CPU)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    amx = tmp_path / "amx"
    amx.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f amx_bf16 amx_tile\n\nprocessor\t: 1\n")
    avx2 = tmp_path / "avx2"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    assert precision.NATIVE_BF16_FLAGS & precision.cpu_flags(amx)
    assert not precision.NATIVE_BF16_FLAGS & precision.cpu_flags(avx2)
    assert precision.cpu_flags(tmp_path / "missing") == frozenset()


def test_command_line_precision_and_its_no_amp_synonym() -> None:
    assert parse_args([]).precision == "auto"
    assert parse_args(["--precision", "bf16"]).precision == "bf16"
    assert parse_args(["--no-amp"]).precision == "fp32"
    with pytest.raises(SystemExit):
        parse_args(["--precision", "int4"])
