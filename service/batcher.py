"""Dynamic batching: images from concurrent requests share one ``run`` call.

No image waits for company. Whenever the runner is free, the batcher runs whatever is queued (up to
``max_batch_size`` images); while a batch runs, arrivals queue and form the next one, so batches grow with
load and a lone request runs at once. A positive ``max_delay_s`` is an opt-in: a batch that is not full then
waits until its oldest image has waited that long (docs/service.md says when that pays).

Admission happens once per request, once its body has arrived and its image count is known: ``admit``
reserves room for all of the request's images in the bounded queue (a full queue refuses at once with 503 and
``Retry-After``) and returns a :class:`Ticket`, on which exactly those images are later submitted. Before the
body is read, ``check`` refuses the same way when the queue is already full but reserves nothing, so overload
is refused without reading a body, and a client that is slow to send its body holds no room. The room is held
until the images are taken into a batch, so the queue bounds every image between admission and the model,
decoding included. The batcher alone counts the room: a ticket is a handle, and ``release`` gives its room
back. A request that has not started by its deadline is answered 504 and never run; a batch that fails fails
only its own requests; ``stop`` refuses new work and finishes what was accepted.

With ``lanes`` > 1 (a CPU with cores to spare), up to that many batches run at once, each on its lane's thread: a batch
that starts while the service is otherwise idle (nothing else running, queued or admitted) runs on ``run``, which
uses every intra-op thread, so a lone request is as fast as the model allows; a batch that starts with company runs
on ``shared_run``, a session with a share of the threads, so that under load the cores run batches side by side
rather than one batch's threads waiting on each other while decoding and the event loop take their turns.
Each lane has a thread of its own, and a batch takes the lowest-numbered free lane: a lone batch always runs on the
same thread, and an idle lane is never woken for another's batch. (Threads sharing one pool's queue were: each
hand-off woke both, and they contended for the interpreter lock, 19 futex calls per request one at a time on a null
model instead of 7.)

A request names the model outputs it needs (``flags``, such as ``{"logits", "class_maps"}``): the batch it lands
in runs ``run(batch, names)`` with every name any of its requests gave, and plain ``run(batch)`` (the model's
defaults) when none gave any.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np

from service import handoff, timings, tracing
from service.errors import ServiceError
from service.metrics import Metrics
from service.workers import worker_pool

log = logging.getLogger(__name__)


def lane_executor(lane: int, niceness: int = 0) -> ThreadPoolExecutor:
    """The one thread that runs lane ``lane``'s batches, ``niceness`` below its creator's priority."""
    return worker_pool(1, f"castream-inference-{lane}", niceness)


@dataclass(eq=False)
class _Job:
    """One request: its images, enqueue time, the future its handler awaits and the timer of its deadline."""

    inputs: list[np.ndarray]
    enqueued: float
    future: asyncio.Future
    flags: frozenset[str] = frozenset()
    results: list[Any] = field(default_factory=list)
    pending: int = 0
    started: bool = False
    taken: float | None = None  # when its first image was taken into a batch (monotonic)
    trace: Any = None  # the request's span context, linked from its batches' spans
    deadline: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class Ticket:
    """Room for a request's images in the queue, from admission until they are taken into a batch.

    Made by :meth:`Batcher.admit`, sized once for all of the request's images. Use it as a context manager: leaving
    the block without submitting (a bad image, a client gone) gives the room back.
    """

    images: int
    batcher: Batcher = field(repr=False)
    held: bool = True  # False once given back, or once its images are queued (the batcher frees them as it takes them)

    def release(self) -> None:
        self.batcher.release(self)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


class Batcher:
    """Collects images into batches for ``run``, which maps [n, ...] arrays to n outputs."""

    def __init__(
        self,
        run: Callable[..., Sequence[Any]],
        *,
        max_batch_size: int,
        max_delay_s: float = 0.0,
        max_queue: int,
        timeout_s: float,
        retry_after_s: int = 1,
        metrics: Metrics | None = None,
        executors: Sequence[Executor] | None = None,
        queue_limit: str | None = None,
        lanes: int = 1,
        shared_run: Callable[..., Sequence[Any]] | None = None,
        beside_after_s: float = 0.0,
    ):
        """``queue_limit`` names what sets ``max_queue`` in a queue-full answer (default ``CASTREAM_MAX_QUEUE=<n>``);
        ``lanes`` batches may run at once, those that start with company on ``shared_run`` (default ``run``), each
        only once the batch started last has run for ``beside_after_s``; ``executors``, one per lane, run them (each
        with one thread; made here by default, and shut down with the batcher)."""
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError(f"max_batch_size={max_batch_size} and max_queue={max_queue} must both be at least 1")
        if lanes < 1:
            raise ValueError(f"lanes={lanes} must be at least 1")
        if executors is not None and len(executors) != lanes:
            raise ValueError(f"{len(executors)} executors for {lanes} lanes: give one per lane")
        if max_delay_s < 0 or timeout_s <= 0:
            raise ValueError(f"max_delay_s={max_delay_s} must be >= 0 and timeout_s={timeout_s} > 0")
        self._run_fn, self.max_batch_size, self.max_delay_s = run, max_batch_size, max_delay_s
        self._shared_run_fn, self.lanes, self.beside_after_s = shared_run or run, lanes, beside_after_s
        self._last_start = 0.0  # when the batch started last began (monotonic)
        self._last_run_s = 0.0  # how long the batch that ended last ran
        self.max_queue, self.timeout_s, self.retry_after_s = max_queue, timeout_s, retry_after_s
        self.queue_limit = queue_limit or f"CASTREAM_MAX_QUEUE={max_queue}"
        self.metrics = metrics or Metrics()
        self.runs = 0
        self.shared_runs = 0  # batches that ran beside another, on shared_run
        self._running: dict[asyncio.Task, int] = {}  # each running batch's task, and its lane
        self._items: deque[tuple[_Job, int]] = deque()
        self._reserved = 0  # images admitted and not yet taken into a batch (queued ones included)
        self._wakeup = asyncio.Event()
        self._executors = list(executors or (lane_executor(lane) for lane in range(lanes)))
        self._task: asyncio.Task | None = None
        self._closing = False

    @property
    def depth(self) -> int:
        """Images queued for a batch."""
        return len(self._items)

    @property
    def reserved(self) -> int:
        """Images admitted and not yet in a batch: queued, or still being read and decoded."""
        return self._reserved

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
                for task in self._running:
                    task.cancel()
            for job, _ in self._items:
                self._fail(job, ServiceError(503, "shutting_down", "the service stopped before running this request"))
            self._reserved -= len(self._items)
            self._items.clear()
        for executor in self._executors:
            executor.shutdown(wait=False)

    def admit(self, images: int = 1) -> Ticket:
        """Room for all of a request's ``images`` now, or 503 at once: its one reservation, once its body is in."""
        self._refuse_unless_room(images)
        self._reserved += images
        return Ticket(images, self)

    def release(self, ticket: Ticket) -> None:
        """Give back the room of ``ticket`` unless its images were queued (then ``_take`` frees it); once only."""
        if ticket.held:
            ticket.held = False
            self._reserved -= ticket.images

    def check(self, images: int = 1) -> None:
        """503 at once, as ``admit`` would, unless ``images`` fit now; reserves nothing.

        Called before a body is read: a full queue is refused without reading it, and a client that then
        takes long to send its body holds no room meanwhile (``admit`` may still refuse once it is in).
        """
        self._refuse_unless_room(images)

    def _refuse_unless_room(self, images: int) -> None:
        if self._closing or self._task is None:
            raise ServiceError(503, "shutting_down", "the service is not accepting work", self._retry_headers())
        free = self.max_queue - self._reserved
        if images > free:
            wait = f"retry in {self.retry_after_s} s" if self.retry_after_s else "retry"
            detail = (
                f"the queue is full ({self._reserved} images waiting; {self.queue_limit}); {wait}"
                if free <= 0
                else f"the queue has room for {free} of this request's {images} images ({self.queue_limit}); "
                f"{wait}, or send fewer images at once"
            )
            raise ServiceError(503, "queue_full", detail, self._retry_headers())

    async def submit(
        self, inputs: list[np.ndarray], flags: frozenset[str] = frozenset(), ticket: Ticket | None = None
    ) -> list[Any]:
        """Queue one request's images and wait for their outputs, in order; ``flags`` name the outputs it needs.

        ``ticket`` is the request's admission, for exactly these images; without one, they are admitted here.
        """
        if ticket is None:
            ticket = self.admit(len(inputs))
        elif not ticket.held or ticket.images != len(inputs):
            state = "held" if ticket.held else "no longer held"
            raise ValueError(
                f"a ticket for {ticket.images} images ({state}) cannot queue {len(inputs)}; admit each request once, "
                "for all of its images"
            )
        elif self._closing:
            self.release(ticket)
            raise ServiceError(503, "shutting_down", "the service is not accepting work", self._retry_headers())
        ticket.held = False  # queued: ``_take`` frees the room image by image
        loop = asyncio.get_running_loop()
        job = _Job(inputs, time.monotonic(), loop.create_future(), flags, [None] * len(inputs), len(inputs))
        job.deadline = loop.call_later(self.timeout_s, self._expire_waiting, job)
        job.trace = tracing.current_context()
        self._items.extend((job, index) for index in range(len(inputs)))
        self.metrics.queue_depth.set(len(self._items))
        self._wakeup.set()
        try:
            return await job.future  # cancelled with the handler when the client goes: its images are skipped
        finally:
            job.deadline.cancel()
            timings.batched(len(inputs), job.enqueued, job.taken)

    def _retry_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}

    def _expire_waiting(self, job: _Job) -> None:
        if not job.started:
            waited = time.monotonic() - job.enqueued
            detail = f"waited {waited:.2f} s in the queue, past CASTREAM_REQUEST_TIMEOUT_MS; retry later"
            self._fail(job, ServiceError(504, "timeout", detail))

    @staticmethod
    def _fail(job: _Job, exc: BaseException) -> None:
        if not job.future.done():
            job.future.set_exception(exc)

    async def _loop(self) -> None:
        while True:
            # Wait for images and a free lane (while closing, only for a free lane: what was accepted still runs).
            while True:
                wait = self._until_lane() if self._items else (0.0 if self._closing else None)
                if wait == 0.0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                except TimeoutError:
                    pass
            if not self._items:
                if self._running:
                    await asyncio.wait(set(self._running))
                return
            if self.max_delay_s > 0:
                await self._fill()
            batch = self._take()
            if not batch:
                continue
            if self.lanes == 1:
                await self._run(batch, self._run_fn, 0)
                continue
            # Every thread for a batch without company: nothing else running, and nothing queued or being read, or
            # nothing that could start beside it (batches end before ``beside_after_s``).
            alone = not self._running and (self._reserved == 0 or self._last_run_s < self.beside_after_s)
            self._last_start = time.monotonic()
            lane = min(set(range(self.lanes)).difference(self._running.values()))
            task = asyncio.create_task(self._run(batch, self._run_fn if alone else self._shared_run_fn, lane))
            if not alone:
                self.shared_runs += 1
                self.metrics.shared_batches.inc()
            self._running[task] = lane
            task.add_done_callback(self._lane_free)

    def _until_lane(self) -> float | None:
        """0 when a batch may start now, else the seconds until one may start beside the running ones (None: not
        before one of them ends). A model whose runs end sooner than ``beside_after_s`` (a small or null model)
        thus runs one batch at a time: a second session would only add its thread hops and smaller batches."""
        if not self._running:
            return 0.0
        if len(self._running) >= self.lanes:
            return None
        return max(0.0, self._last_start + self.beside_after_s - time.monotonic())

    def _lane_free(self, task: asyncio.Task) -> None:
        self._running.pop(task, None)
        self._wakeup.set()

    async def _fill(self) -> None:
        """The opt-in delay: wait for a full batch until the oldest queued image has waited ``max_delay_s``."""
        close_at = self._items[0][0].enqueued + self.max_delay_s
        while len(self._items) < self.max_batch_size and not self._closing:
            remaining = close_at - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[tuple[_Job, int]]:
        """Pop up to one batch of live images, giving back their room; finished or expired requests are skipped."""
        batch: list[tuple[_Job, int]] = []
        now = time.monotonic()
        while self._items and len(batch) < self.max_batch_size:
            job, index = self._items.popleft()
            self._reserved -= 1
            if job.future.done():
                continue
            if not job.started:
                job.started, job.taken = True, now
                self.metrics.queue_wait_seconds.observe(now - job.enqueued)
            batch.append((job, index))
        self.metrics.queue_depth.set(len(self._items))
        return batch

    async def _run(self, batch: list[tuple[_Job, int]], run: Callable[..., Sequence[Any]], lane: int) -> None:
        inputs = [job.inputs[index] for job, index in batch]
        flags = frozenset().union(*(job.flags for job, _ in batch))
        start = time.perf_counter()
        try:
            with tracing.batch_span(len(batch), [job.trace for job, _ in batch]):
                outputs = await handoff.call(self._executors[lane], self._run_sync, run, inputs, flags)
            if len(outputs) != len(batch):
                raise RuntimeError(f"run returned {len(outputs)} outputs for {len(batch)} images")
        except Exception as exc:
            log.error("a batch of %d images failed: %r", len(batch), exc)
            for job, _ in batch:
                self._fail(job, exc)
            return
        self.runs += 1
        self._last_run_s = time.perf_counter() - start
        self.metrics.batch(len(batch), self._last_run_s)
        for (job, index), output in zip(batch, outputs, strict=True):
            if job.future.done():
                continue
            job.results[index] = output
            job.pending -= 1
            if job.pending == 0:
                job.future.set_result(job.results)

    def _run_sync(
        self, run: Callable[..., Sequence[Any]], inputs: list[np.ndarray], flags: frozenset[str]
    ) -> Sequence[Any]:
        # A lone image (every batch at low load) goes as a view with a batch axis rather than a copy.
        batch = np.ascontiguousarray(inputs[0][np.newaxis]) if len(inputs) == 1 else np.stack(inputs)
        return run(batch, flags) if flags else run(batch)
