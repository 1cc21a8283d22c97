"""Worker threads that yield the CPU to the event loop.

On a few cores, decoding and ONNX Runtime keep every core busy under load, and the event loop, which reads
requests, refuses the excess with 503, starts the next batch and sends the answers, would wait for its share
like any other thread. Its work per request is short and unblocks everything else, so the threads doing the
long work run at a lower priority (a higher nice value, Linux's per-thread priority): the loop gets the CPU
first, and the long work gets everything it leaves. ONNX Runtime's own threads inherit the value from the
thread that opens the session. Linux weighs nice values within a scheduling group (a container's cgroup,
a session under autogroup): CPU-bound processes sharing that group get ahead of the long work too
(``CASTREAM_WORKER_NICENESS=0`` turns this off).
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

NICENESS = 5  # CFS weights: a nice-0 thread gets about three times the CPU of a nice-5 one it competes with


def lower_priority(niceness: int = NICENESS) -> None:
    """Raise the calling thread's nice value by ``niceness`` (where the OS has per-thread priorities)."""
    if niceness <= 0 or not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + niceness)
    except OSError as exc:  # a sandbox may forbid it; the service works the same, only less fairly
        log.debug("cannot lower the priority of thread %d: %s", tid, exc)


def worker_pool(threads: int, name: str, niceness: int = NICENESS) -> ThreadPoolExecutor:
    """A thread pool whose threads run ``niceness`` below their creator's priority (0: the same)."""
    return ThreadPoolExecutor(threads, thread_name_prefix=name, initializer=lower_priority, initargs=(niceness,))
