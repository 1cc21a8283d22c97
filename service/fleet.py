"""What the serving processes of one service share when ``CASTREAM_WORKERS`` is above 1.

The parent process makes a :class:`Board` before it starts the workers: a few integers in shared memory,
one slot per worker (its pid and its lifecycle phase) and a flag the parent raises when the service stops.
Each worker writes only its own slot and reads all of them, so whichever worker answers a probe answers for
the whole service: ready only while every slot is warm and the service is not stopping. The parent resets a
slot when its worker exits, so a dead or replaced worker counts as starting until its successor is warm.
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass
from enum import StrEnum
from multiprocessing.context import BaseContext


class Phase(StrEnum):
    starting = "starting"
    ready = "ready"
    draining = "draining"
    failed = "failed"


_PHASES = tuple(Phase)  # a phase is stored as its position here; shared memory starts zeroed, i.e. starting
# The layout: [stopping, parent pid, then per worker: pid, phase, whether it has been ready since it started].
_STOPPING, _PARENT, _SLOTS, _WIDTH = 0, 1, 2, 3
# What the service reports when its workers differ, most telling first.
_PRECEDENCE = (Phase.failed, Phase.draining, Phase.starting)


class Board:
    """The workers' shared slots. Made by the parent; handed to each worker when it is started.

    Each cell has one writer at a time (a slot its worker, or the parent between two workers; the flag and
    the parent's pid the parent), and readers take whatever value is there: no lock is needed.
    """

    def __init__(self, workers: int, context: BaseContext | None = None):
        if workers < 1:
            raise ValueError(f"workers={workers}; expected at least 1")
        context = context or multiprocessing.get_context("spawn")
        self.workers = workers
        self._cells = context.RawArray("q", _SLOTS + _WIDTH * workers)
        self._cells[_PARENT] = os.getpid()

    def reset(self, index: int) -> None:
        """The parent empties slot ``index`` once its worker has exited, before it starts the next one."""
        base = _SLOTS + _WIDTH * index
        self._cells[base : base + _WIDTH] = [0, _PHASES.index(Phase.starting), 0]

    def claim(self, index: int, pid: int) -> None:
        """A new worker takes slot ``index`` as it begins."""
        self._cells[_SLOTS + _WIDTH * index] = pid

    def publish(self, index: int, phase: Phase) -> None:
        base = _SLOTS + _WIDTH * index
        self._cells[base + 1] = _PHASES.index(phase)
        if phase is Phase.ready:
            self._cells[base + 2] = 1

    def phase_of(self, index: int) -> Phase:
        return _PHASES[self._cells[_SLOTS + _WIDTH * index + 1]]

    def was_ready(self, index: int) -> bool:
        """Whether the worker in slot ``index`` has been ready at all (a failed start drains on its way out)."""
        return bool(self._cells[_SLOTS + _WIDTH * index + 2])

    def stop(self) -> None:
        """The service is stopping: every probe reports draining from now on."""
        self._cells[_STOPPING] = 1

    def service_phase(self) -> Phase:
        """Ready only when every worker is; otherwise failed, draining or starting, in that precedence."""
        if self._cells[_STOPPING]:
            return Phase.draining
        phases = {self.phase_of(i) for i in range(self.workers)}
        return next((phase for phase in _PRECEDENCE if phase in phases), Phase.ready)

    def pids(self) -> list[int]:
        """The parent's pid, then those of the workers holding a slot."""
        workers = (self._cells[_SLOTS + _WIDTH * i] for i in range(self.workers))
        return [self._cells[_PARENT], *(pid for pid in workers if pid)]


@dataclass(frozen=True)
class Slot:
    """One worker's place among its siblings: the board, its slot on it, and the directory where every worker
    writes its metric values (prometheus-client's multiprocess mode) for any of them to sum at a scrape."""

    board: Board
    index: int
    metrics_dir: str

    def publish(self, phase: Phase) -> None:
        self.board.publish(self.index, phase)
