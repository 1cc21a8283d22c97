"""Dynamic batching: images from concurrent requests share one ``run`` call.

A batch closes when it holds ``max_batch_size`` images or when its oldest image has waited
``max_delay_s``. Batches run one at a time in a worker thread; while one runs, the next fills up, so
batches grow with load. The queue is bounded (a full queue refuses at once with 503) and each request
carries a deadline: one that has not started by then is answered 504 and never run.

A request may ask for extra outputs (``flags``, such as ``class_maps``): the batch it lands in runs with
``run(batch, flag=True)`` for every flag any of its requests asked for, and plain ``run(batch)`` otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import ServiceError
from service.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Job:
    """One request: its images, enqueue time, deadline and the future its handler awaits."""

    inputs: list[np.ndarray]
    enqueued: float
    deadline: float
    future: asyncio.Future
    results: list[Any] = field(default_factory=list)
    pending: int = 0
    started: bool = False
    flags: frozenset[str] = frozenset()


class Batcher:
    """Collects images into batches for ``run``, which maps [n, ...] arrays to n outputs."""

    def __init__(
        self,
        run: Callable[..., Sequence[Any]],
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        timeout_s: float,
        retry_after_s: int = 1,
        metrics: Metrics | None = None,
    ):
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError(f"max_batch_size={max_batch_size} and max_queue={max_queue} must both be at least 1")
        if max_delay_s < 0 or timeout_s <= 0:
            raise ValueError(f"max_delay_s={max_delay_s} must be >= 0 and timeout_s={timeout_s} > 0")
        self._run_fn, self.max_batch_size, self.max_delay_s = run, max_batch_size, max_delay_s
        self.max_queue, self.timeout_s, self.retry_after_s = max_queue, timeout_s, retry_after_s
        self.metrics = metrics or Metrics()
        self.runs = 0
        self._items: deque[tuple[_Job, int]] = deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="castream-inference")
        self._task: asyncio.Task | None = None
        self._closing = False

    @property
    def depth(self) -> int:
        """Images waiting to be batched."""
        return len(self._items)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="castream-batcher")

    async def stop(self, timeout_s: float) -> None:
        """Refuse new work, finish what was accepted (up to ``timeout_s``), then release the thread."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout_s)
            except TimeoutError:
                log.error("batcher did not drain within %.1f s; failing %d queued images", timeout_s, self.depth)
            for job, _ in self._items:
                self._fail(job, ServiceError(503, "shutting_down", "the service stopped before running this request"))
            self._items.clear()
        self._executor.shutdown(wait=False)

    def admit(self, images: int) -> None:
        """Raise 503 unless ``images`` more fit in the queue now; cheap enough to call before decoding."""
        if self._closing or self._task is None:
            raise ServiceError(503, "shutting_down", "the service is not accepting work", self._retry_headers())
        if self.depth + images > self.max_queue:
            raise ServiceError(
                503,
                "queue_full",
                f"the queue holds {self.depth} of {self.max_queue} images (CASTREAM_MAX_QUEUE); retry later",
                self._retry_headers(),
            )

    async def submit(self, inputs: list[np.ndarray], flags: frozenset[str] = frozenset()) -> list[Any]:
        """Queue one request's images and wait for their outputs, in order; ``flags`` ask for extra outputs."""
        self.admit(len(inputs))
        now = time.monotonic()
        future = asyncio.get_running_loop().create_future()
        job = _Job(inputs, now, now + self.timeout_s, future, [None] * len(inputs), len(inputs), flags=flags)
        self._items.extend((job, index) for index in range(len(inputs)))
        self.metrics.queue_depth.set(self.depth)
        self._wakeup.set()
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        except TimeoutError:
            if not job.started:
                self._expire(job)
            return await future
        except asyncio.CancelledError:
            future.cancel()  # the client went away: its queued images are skipped
            raise

    def _retry_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}

    def _expire(self, job: _Job) -> None:
        waited = time.monotonic() - job.enqueued
        detail = f"waited {waited:.2f} s in the queue, past CASTREAM_REQUEST_TIMEOUT_MS; retry later"
        self._fail(job, ServiceError(504, "timeout", detail))

    @staticmethod
    def _fail(job: _Job, exc: BaseException) -> None:
        if not job.future.done():
            job.future.set_exception(exc)

    async def _loop(self) -> None:
        while True:
            while not self._items and not self._closing:
                self._wakeup.clear()
                await self._wakeup.wait()
            if not self._items:
                return
            close_at = self._items[0][0].enqueued + self.max_delay_s
            while len(self._items) < self.max_batch_size and not self._closing:
                remaining = close_at - time.monotonic()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take()
            if batch:
                await self._run(batch)

    def _take(self) -> list[tuple[_Job, int]]:
        """Pop up to one batch of live images; requests past their deadline are answered 504 here."""
        batch: list[tuple[_Job, int]] = []
        now = time.monotonic()
        while self._items and len(batch) < self.max_batch_size:
            job, index = self._items.popleft()
            if job.future.done():
                continue
            if not job.started:
                if now > job.deadline:
                    self._expire(job)
                    continue
                job.started = True
                self.metrics.queue_wait_seconds.observe(now - job.enqueued)
            batch.append((job, index))
        self.metrics.queue_depth.set(self.depth)
        return batch

    async def _run(self, batch: list[tuple[_Job, int]]) -> None:
        inputs = [job.inputs[index] for job, index in batch]
        flags = frozenset().union(*(job.flags for job, _ in batch))
        start = time.perf_counter()
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self._run_sync, inputs, flags)
            if len(outputs) != len(batch):
                raise RuntimeError(f"run returned {len(outputs)} outputs for {len(batch)} images")
        except Exception as exc:
            log.error("a batch of %d images failed: %r", len(batch), exc)
            for job, _ in batch:
                self._fail(job, exc)
            return
        self.runs += 1
        self.metrics.batch(len(batch), time.perf_counter() - start)
        for (job, index), output in zip(batch, outputs, strict=True):
            if job.future.done():
                continue
            job.results[index] = output
            job.pending -= 1
            if job.pending == 0:
                job.future.set_result(job.results)

    def _run_sync(self, inputs: list[np.ndarray], flags: frozenset[str]) -> Sequence[Any]:
        return self._run_fn(np.stack(inputs), **dict.fromkeys(sorted(flags), True))
