"""``CASTREAM_WORKERS=N``: a parent process binds the port once and runs N serving processes on it.

Each worker (a fresh interpreter, started with multiprocessing's ``spawn``) has its own ONNX Runtime session,
batcher and event loop, and accepts connections on the shared listening socket. It gets its share of the
queue and, where the thread counts are automatic, of the cores (``Settings.worker_share``). The workers'
phases live on a shared board (``service.fleet``), so any of them answers the probes for the whole service,
and their metrics go to files in a private directory, so any of them answers ``/metrics`` for all.

The parent serves nothing. It restarts a worker that exits unexpectedly once it has been ready; a worker that
exits or fails before it was ready means the model or the settings cannot work, so the service stops (status
3) rather than restart it forever. SIGTERM and SIGINT are forwarded to every worker, which drains as a single
server would; a worker still running after the drain delay and twice the shutdown timeout is killed.
Exit status: 0 when stopped on request, 1 if a worker had to be killed, 3 if a worker could not start or the
port could not be bound (2, invalid settings, comes before any of this).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import TYPE_CHECKING

from prometheus_client.multiprocess import mark_process_dead

from service.fleet import Board, Phase, Slot
from service.logs import configure as configure_logging
from service.settings import Settings

if TYPE_CHECKING:
    from service.server import DrainingServer

log = logging.getLogger(__name__)

METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus-client when a worker imports it
KILL_AFTER_S = 5.0  # beyond the drain delay and the shutdown bounds, before a worker that has not exited is killed
POLL_S = 0.5  # besides exits and signals, how often the parent looks at the workers' phases
BACKLOG = 2048  # uvicorn's default


class Supervisor:
    """Runs ``settings.workers`` serving processes on one port until stopped; :meth:`run` gives the exit status."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._context = multiprocessing.get_context("spawn")
        self._processes: list[BaseProcess] = []
        self._signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def run(self) -> int:
        s = self.settings
        try:
            sock = listen(s.host, s.port)
        except OSError as exc:
            log.error("cannot listen on %s port %d: %s", s.host, s.port, exc)
            return 3
        metrics_dir = tempfile.mkdtemp(prefix="castream-metrics-")  # private, empty: no values from another run
        os.environ[METRICS_DIR] = metrics_dir  # the workers inherit it
        self._board, self._sock, self._metrics_dir = Board(s.workers, self._context), sock, metrics_dir
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        share = s.worker_share(0)
        log.info(
            "listening on %s port %d with %d worker processes, each with about %d queued images, %d ONNX Runtime "
            "and %d decode threads",
            s.host, s.port, s.workers, share.max_queue, share.intra_op_threads, share.decode_threads,
        )  # fmt: skip
        try:
            for index in range(s.workers):
                self._processes.append(self._start(index))
            return self._watch()
        finally:
            self._kill(self._alive())  # only after an unexpected error: every path above stops them first
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            sock.close()
            os.environ.pop(METRICS_DIR, None)
            shutil.rmtree(metrics_dir, ignore_errors=True)
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _start(self, index: int) -> BaseProcess:
        self._board.reset(index)
        slot = Slot(self._board, index, self._metrics_dir)
        process = self._context.Process(
            target=serve_worker, args=(self.settings.worker_share(index), slot, self._sock), name=f"worker-{index}"
        )
        process.start()
        log.info("worker %d started (pid %d)", index, process.pid)
        return process

    def _watch(self) -> int:
        """Until a signal or a failure: restart workers that exit after being ready; return the exit status."""
        ready = False
        while True:
            self._wait([p.sentinel for p in self._processes], POLL_S)
            if self._signals:
                sig = self._signals.pop(0)
                return self._stop(sig, f"on {signal.Signals(sig).name}")
            for index, process in enumerate(self._processes):
                if process.exitcode is None:
                    continue
                mark_process_dead(process.pid, self._metrics_dir)  # its live gauges (queue, in flight) go
                if not self._board.was_ready(index):
                    log.error(
                        "worker %d (pid %d) %s before it was ready; stopping the service (its log above says why)",
                        index, process.pid, ended(process.exitcode),
                    )  # fmt: skip
                    self._stop(signal.SIGINT, "after a failed start")
                    return 3
                log.warning("worker %d (pid %d) %s; starting another", index, process.pid, ended(process.exitcode))
                self._processes[index] = self._start(index)
            failed = [i for i in range(self.settings.workers) if self._board.phase_of(i) is Phase.failed]
            if failed:
                log.error("worker %d failed its warm-up; stopping the service (its log above says why)", failed[0])
                self._stop(signal.SIGINT, "after a failed warm-up")
                return 3
            now_ready = self._board.service_phase() is Phase.ready
            if now_ready and not ready:
                log.info("all %d workers are ready", self.settings.workers)
            ready = now_ready

    def _stop(self, sig: int, why: str) -> int:
        """Every worker drains and exits (SIGTERM) or just exits (SIGINT); a later signal is passed on too."""
        self._board.stop()
        s = self.settings
        bound = s.drain_delay_s + 2 * s.shutdown_timeout_s + KILL_AFTER_S
        log.info("stopping the workers %s (%d running; at most %.0f s)", why, len(self._alive()), bound)
        self._forward(sig)
        deadline = time.monotonic() + bound
        while (alive := self._alive()) and (left := deadline - time.monotonic()) > 0:
            self._wait([p.sentinel for p in alive], left)
            while self._signals:  # a second signal hurries them, as it does a single server
                self._forward(self._signals.pop(0))
        stragglers = self._alive()
        for process in stragglers:
            index = self._processes.index(process)
            log.error("worker %d (pid %d) did not stop within %.0f s; killing it", index, process.pid, bound)
        self._kill(stragglers)
        return 1 if stragglers else 0

    def _alive(self) -> list[BaseProcess]:
        return [p for p in self._processes if p.exitcode is None]

    def _forward(self, sig: int) -> None:
        for process in self._alive():
            try:
                os.kill(process.pid, sig)
            except ProcessLookupError:  # exited since
                pass

    def _kill(self, processes: list[BaseProcess]) -> None:
        for process in processes:
            process.kill()
        for process in processes:
            process.join(KILL_AFTER_S)

    def _wait(self, sentinels: list[int], timeout: float) -> None:
        """Until a worker exits, a signal arrives or ``timeout`` passes."""
        wait([*sentinels, self._wake_r], timeout)
        try:
            os.read(self._wake_r, 1024)
        except BlockingIOError:
            pass

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._signals.append(sig)
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:  # already awake
            pass


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host``:``port``, for the workers to accept on."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def ended(exitcode: int) -> str:
    """How a process ended, in words: "exited with status 3", "was killed by SIGKILL"."""
    if exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    return f"exited with status {exitcode}"


def serve_worker(settings: Settings, slot: Slot, sock: socket.socket) -> None:
    """A worker process: serve ``sock`` until the parent passes on a signal, or exits."""
    # Its own session: a terminal's Ctrl-C reaches the parent alone, which passes one signal to each worker (a
    # second SIGINT would make uvicorn drop the requests in flight).
    os.setsid()
    slot.board.claim(slot.index, os.getpid())
    configure_logging(settings.log_level, settings.log_format)
    from service.server import build, run  # the app's libraries, in the worker only

    server = build(settings, slot)
    threading.Thread(target=_stop_with_parent, args=(server,), name="parent-watch", daemon=True).start()
    sys.exit(run(server, [sock]))


def _stop_with_parent(server: DrainingServer) -> None:
    """Stop serving (as on SIGINT) if the parent exits without stopping this worker: killed, say."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    parent.join()
    log.warning("the supervising process has exited; stopping")
    server.handle_exit(signal.SIGINT, None)
