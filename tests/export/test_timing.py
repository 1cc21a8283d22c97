"""Timing in alternating rounds: the order, the round limits, and ONNX Runtime sessions timed side by side."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from export.pipeline import ExportReport
from export.timing import Timings, interleaved, time_sessions


def test_interleaved_alternates_the_order_and_keeps_to_the_rounds() -> None:
    calls: list[str] = []
    seconds = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, budget_s=0, min_rounds=3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert {key: len(values) for key, values in seconds.items()} == {"a": 3, "b": 3}
    calls.clear()
    interleaved({"a": lambda: calls.append("a")}, budget_s=60, min_rounds=1, max_rounds=2)
    assert calls == ["a", "a"]
    with pytest.raises(ValueError, match="min_rounds"):
        interleaved({"a": lambda: None}, budget_s=0, min_rounds=3, max_rounds=2)
    with pytest.raises(ValueError, match="no steps"):
        interleaved({}, budget_s=0)


def test_ratios_are_medians_of_per_round_ratios_or_of_the_fastest_runs() -> None:
    timings = Timings(2, {"a": np.array([2.0, 4.0, 9.0]), "b": np.array([2.0, 1.0, 3.0])})
    assert timings.ratio("a", "b") == 3.0  # per round 1, 4, 3; the ratio of the medians would be 2
    assert timings.best_ratio("a", "b") == 2.0  # fastest 2 s against fastest 1 s
    assert timings.median_ms("a") == 4000.0 and timings.images_per_second("b") == 1.0


def test_timing_interleaves_sessions_and_respects_round_limits(ca_export: ExportReport) -> None:
    from export.sessions import make_session

    session = make_session(onnx.load(str(ca_export.path)), threads=1)
    images = np.zeros((2, 3, 64, 64), np.float32)
    timings = time_sessions({"a": session, "b": session}, images, budget_s=0.0, min_rounds=4, max_rounds=4)
    assert timings.rounds == 4 and timings.batch_size == 2
    assert set(timings.seconds) == {"a", "b"} and all((s > 0).all() for s in timings.seconds.values())
    with pytest.raises(ValueError, match="min_rounds"):
        time_sessions({"a": session}, images, min_rounds=5, max_rounds=2)
