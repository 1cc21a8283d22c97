"""Per-request stage timings: a dict in a context variable that the stages write into (when someone listens).

The access log (``service/logs.py``) opens one per request; without it, ``current()`` is None and the stages
record nothing. Keys: ``decode_ms`` (decode and preprocess, all images), ``queue_ms`` (enqueued to taken into
a batch), ``run_ms`` (taken to the last output), ``encode_ms`` (the response body), ``images``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar, Token

from service import tracing

_stages: ContextVar[dict[str, float] | None] = ContextVar("castream_stages", default=None)


def begin() -> tuple[dict[str, float], Token]:
    stages: dict[str, float] = {}
    return stages, _stages.set(stages)


def end(token: Token) -> None:
    _stages.reset(token)


def current() -> dict[str, float] | None:
    return _stages.get()


_UNTIMED = nullcontext()


def stage(name: str) -> AbstractContextManager[None]:
    """Add the block's wall time, in milliseconds, to stage ``name`` of the current request (and trace it as a span
    when tracing is on); a shared do-nothing context when neither listens."""
    if _stages.get() is None and not tracing.enabled():
        return _UNTIMED
    return _stage(name)


@contextmanager
def _stage(name: str) -> Iterator[None]:
    stages = _stages.get()
    if stages is None:
        with tracing.span(name):
            yield
        return
    start = time.perf_counter()
    try:
        with tracing.span(name):
            yield
    finally:
        key = f"{name}_ms"
        stages[key] = stages.get(key, 0.0) + (time.perf_counter() - start) * 1000


def batched(images: int, enqueued: float, taken: float | None) -> None:
    """Record a request's images and its queue wait and run, from monotonic enqueue and take times."""
    tracing.record_wait(enqueued, taken, images)
    stages = _stages.get()
    if stages is None:
        return
    stages["images"] = stages.get("images", 0) + images
    if taken is not None:
        stages["queue_ms"] = (taken - enqueued) * 1000
        stages["run_ms"] = (time.monotonic() - taken) * 1000
