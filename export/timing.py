"""Side-by-side ONNX Runtime timings: sessions run in alternating order on the same input.

On a shared machine the load changes from second to second, so sessions are timed round by round,
each round running every session once (forwards, then backwards the next round), and a ratio is the
median of the per-round ratios: both sides of a ratio always ran moments apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import onnxruntime as ort

from service.contract import INPUT

K = TypeVar("K")


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


def round_order(keys: Sequence[K], round_: int) -> list[K]:
    """The order of ``keys`` in round ``round_``: forwards in even rounds, backwards in odd ones (ABBA...)."""
    return list(keys) if round_ % 2 == 0 else list(reversed(keys))


def interleaved(
    steps: dict[K, Callable[[], object]], budget_s: float, min_rounds: int = 3, max_rounds: int = 1000
) -> dict[K, np.ndarray]:
    """Seconds of each step per round; every round runs every step once, in alternating order.

    Stops after ``budget_s`` seconds (at least ``min_rounds`` rounds, at most ``max_rounds``).
    """
    if not steps:
        raise ValueError("no steps to time")
    if min_rounds < 1 or max_rounds < min_rounds:
        raise ValueError(f"need 1 <= min_rounds <= max_rounds, got {min_rounds} and {max_rounds}")
    seconds: dict[K, list[float]] = {key: [] for key in steps}
    started = time.perf_counter()
    for round_ in range(max_rounds):
        for key in round_order(list(steps), round_):
            begin = time.perf_counter()
            steps[key]()
            seconds[key].append(time.perf_counter() - begin)
        if round_ + 1 >= min_rounds and time.perf_counter() - started >= budget_s:
            break
    return {key: np.array(values) for key, values in seconds.items()}


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
    feed = {INPUT: np.ascontiguousarray(images, dtype=np.float32)}
    for session in sessions.values():  # warm-up: first runs allocate memory and pick kernels
        session.run(None, feed)
    steps = {name: (lambda session=session: session.run(None, feed)) for name, session in sessions.items()}
    return Timings(len(images), interleaved(steps, budget_s, min_rounds, max_rounds))
