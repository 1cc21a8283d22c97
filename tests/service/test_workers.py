"""Worker threads run below the event loop's priority; the thread that starts them keeps its own."""

from __future__ import annotations

import os
import threading

from service.workers import NICENESS, worker_pool


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_pool_threads_run_at_a_lower_priority_than_their_creator() -> None:
    before = _nice()
    pool = worker_pool(2, "test-worker")
    try:
        seen = set(pool.map(lambda _: (threading.current_thread().name, _nice()), range(8)))
    finally:
        pool.shutdown()
    assert {nice for _, nice in seen} == {min(before + NICENESS, 19)}
    assert all(name.startswith("test-worker") for name, _ in seen)
    assert _nice() == before


def test_threads_started_by_a_worker_inherit_its_priority() -> None:
    # ONNX Runtime's own threads are started by the thread that opens the session: they inherit its value.
    pool = worker_pool(1, "test-worker")
    try:

        def child_nice() -> int:
            result: list[int] = []
            child = threading.Thread(target=lambda: result.append(_nice()))
            child.start()
            child.join()
            return result[0]

        worker, child = pool.submit(_nice).result(), pool.submit(child_nice).result()
    finally:
        pool.shutdown()
    assert child == worker > _nice()


def test_niceness_zero_leaves_the_priority_alone() -> None:
    pool = worker_pool(1, "test-worker", niceness=0)
    try:
        assert pool.submit(_nice).result() == _nice()
    finally:
        pool.shutdown()
