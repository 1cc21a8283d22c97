"""Side-by-side ONNX Runtime timings: sessions run in alternating order on the same input.

On a shared machine the load changes from second to second, so sessions are timed round by round,
each round running every session once (forwards, then backwards the next round), and a ratio is the
median of the per-round ratios: both sides of a ratio always ran moments apart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from export.graph import INPUT


@dataclass(frozen=True)
class Timings:
    """Per-round latencies in seconds, by session name, all on batches of ``batch_size`` images."""

    batch_size: int
    seconds: dict[str, np.ndarray]

    @property
    def rounds(self) -> int:
        return len(next(iter(self.seconds.values())))

    def median_ms(self, name: str) -> float:
        return float(np.median(self.seconds[name])) * 1000

    def images_per_second(self, name: str) -> float:
        return self.batch_size / float(np.median(self.seconds[name]))

    def ratio(self, numerator: str, denominator: str) -> float:
        """Median over rounds of ``numerator``'s latency divided by ``denominator``'s."""
        return float(np.median(self.seconds[numerator] / self.seconds[denominator]))

    def best_ratio(self, numerator: str, denominator: str) -> float:
        """Ratio of the fastest runs: the least disturbed estimate when other processes share the CPU."""
        return float(self.seconds[numerator].min() / self.seconds[denominator].min())


def time_sessions(
    sessions: dict[str, ort.InferenceSession],
    images: np.ndarray,
    budget_s: float = 10.0,
    min_rounds: int = 3,
    max_rounds: int = 200,
) -> Timings:
    """Times every session on ``images`` for about ``budget_s`` seconds (at least ``min_rounds`` rounds)."""
    if not sessions:
        raise ValueError("no sessions to time")
    if min_rounds < 1 or max_rounds < min_rounds:
        raise ValueError(f"need 1 <= min_rounds <= max_rounds, got {min_rounds} and {max_rounds}")
    feed = {INPUT: np.ascontiguousarray(images, dtype=np.float32)}
    names = list(sessions)
    for name in names:  # warm-up: first runs allocate memory and pick kernels
        sessions[name].run(None, feed)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    started = time.perf_counter()
    for round_ in range(max_rounds):
        for name in names if round_ % 2 == 0 else reversed(names):
            begin = time.perf_counter()
            sessions[name].run(None, feed)
            seconds[name].append(time.perf_counter() - begin)
        if round_ + 1 >= min_rounds and time.perf_counter() - started >= budget_s:
            break
    return Timings(len(images), {name: np.array(values) for name, values in seconds.items()})
