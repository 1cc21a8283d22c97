"""Where the milliseconds of one request go: the service timestamps each stage while wrk sends one request at a time.

The service runs in this process under uvicorn on a loopback port, with its stage boundaries wrapped to take
``perf_counter`` readings (a few microseconds each); ``wrk`` (one connection) sends the same JSON base64 image
to ``POST /classify?top_k=1`` as ``benchmarks.load`` does. With one request in flight at a time, each reading
belongs to the one request; the report gives the median of each stage over all requests, and the client's
latency beside the service's own time (the rest is HTTP on the wire, uvicorn's parsing and the client).

    python -m benchmarks timeline --model models/castream.onnx --seconds 10
"""

from __future__ import annotations

import asyncio
import inspect
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn

from benchmarks.harness import HOST, Phase, free_port, get_status, make_images
from benchmarks.load import body_files, wrk_phase
from benchmarks.sections import Section, fmt, table
from service import inputs, middleware, serving
from service.app import create_app
from service.batcher import Batcher
from service.routes import classify
from service.settings import load_settings

# Stage name: (reading it starts at, reading it ends at).
STAGES = {
    "routing, query validation, dependencies": ("app", "handler"),
    "body reading": ("handler", "body"),
    "JSON and base64": ("body", "parsed"),
    "hop to a decode thread": ("parsed", "decode_start"),
    "decode (bytes to RGB)": ("decode_start", "decoded"),
    "preprocess (resize, crop, normalise)": ("decoded", "prepared"),
    "hop back to the event loop": ("prepared", "queued"),
    "queue (until the batcher takes it)": ("queued", "taken"),
    "hop to the inference thread": ("taken", "run_start"),
    "run (`OnnxModel.run`, batch 1)": ("run_start", "run_end"),
    "hop back, batcher hands the result over": ("run_end", "resumed"),
    "encode (top-k, grid, JSON)": ("resumed", "encoded"),
    "response (send through the middleware)": ("encoded", "sent"),
}


class Timeline:
    """Readings of the request in flight; ``finish`` files them when its response has been sent."""

    def __init__(self) -> None:
        self.current: dict[str, float] = {}
        self.requests: list[dict[str, float]] = []

    def mark(self, name: str) -> None:
        self.current[name] = time.perf_counter()

    def finish(self) -> None:
        self.mark("sent")
        if all(name in self.current for pair in STAGES.values() for name in pair):
            self.requests.append(self.current)
        self.current = {}


@contextmanager
def instrumented(timeline: Timeline) -> Iterator[None]:
    """The service's stage boundaries wrapped to take readings, in this process, for the ``with`` block."""
    mark, undo = timeline.mark, []

    def wrap(owner: Any, name: str, before: str | None = None, after: str | None = None) -> None:
        original = getattr(owner, name)
        undo.append((owner, name, original))

        def note(reading: str | None) -> None:
            if reading == "finish":
                timeline.finish()
            elif reading:
                mark(reading)

        if inspect.iscoroutinefunction(original):

            async def wrapped(*args: Any, **kwargs: Any) -> Any:
                note(before)
                result = await original(*args, **kwargs)
                note(after)
                return result

        else:

            def wrapped(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
                note(before)
                result = original(*args, **kwargs)
                note(after)
                return result

        setattr(owner, name, wrapped)

    wrap(middleware.MetricsMiddleware, "__call__", "app", "finish")
    wrap(classify, "read_images", "handler")
    wrap(inputs, "read_body", after="body")
    wrap(serving.Serving, "prepare", "parsed", "queued")
    wrap(serving.Serving, "_prepare", "decode_start", "prepared")
    wrap(serving.Serving, "infer", after="resumed")
    wrap(serving.Serving, "encode", after="encoded")
    wrap(Batcher, "_take", after="taken")
    wrap(Batcher, "_run_sync", "run_start", "run_end")
    wrap(serving.Preprocessor, "__call__", "decoded")
    try:
        yield
    finally:
        for owner, name, original in reversed(undo):
            setattr(owner, name, original)


def measure(model: Path, seconds: float, images: int = 32) -> dict[str, Any]:
    """One request at a time through the instrumented service: the median of each stage, and the client's view."""
    timeline, port = Timeline(), free_port()
    settings = load_settings(model_path=model, host=HOST, port=port, log_level="warning")
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=HOST, port=port, log_level="warning"))
    client: list[Phase] = []

    def drive() -> None:
        try:
            deadline = time.monotonic() + 60
            while asyncio.run(get_status(port, "/readyz")) != 200:
                if time.monotonic() > deadline:
                    return  # never ready: measure() says so once the server has stopped
                time.sleep(0.1)
            with tempfile.TemporaryDirectory() as folder:
                bodies = body_files(Path(folder), make_images(images, 300, width=451))
                wrk_phase(port, bodies, 1, 10**6, 2)  # warm-up, discarded
                timeline.requests.clear()
                client.append(wrk_phase(port, bodies, 1, 10**6, seconds))
        finally:
            server.should_exit = True

    with instrumented(timeline):
        threading.Thread(target=drive, daemon=True).start()
        server.run()
    if not client:
        raise RuntimeError("the timeline's client did not finish; see the log above")
    requests = timeline.requests
    stages = {
        name: float(np.median([r[end] - r[start] for r in requests]) * 1000) for name, (start, end) in STAGES.items()
    }
    return {
        "requests": len(requests),
        "stages_ms": stages,
        "service_ms": float(np.median([r["sent"] - r["app"] for r in requests]) * 1000),
        "client_p50_ms": client[0].p50_ms,
        "client_p99_ms": client[0].p99_ms,
    }


def _render(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    rows = [[name, fmt(ms, 3)] for name, ms in r["stages_ms"].items()]
    rows += [["sum of the stages", fmt(sum(r["stages_ms"].values()), 3)],
             ["inside the app (median of the whole)", fmt(r["service_ms"], 3)],
             ["client p50 / p99 (wrk)", f"{fmt(r['client_p50_ms'], 3)} / {fmt(r['client_p99_ms'], 3)}"]]  # fmt: skip
    return [
        f"{r['requests']} requests from one `wrk` connection, one at a time, to the service in the benchmark's own "
        "process with its stage boundaries timestamped (a few microseconds each); the median of each stage.",
        "",
        *table(["stage", "ms"], rows),
        "",
    ]


SECTIONS = (
    Section(
        "timeline",
        "Where the milliseconds of one request go, stage by stage",
        full={"seconds": 10.0},
        quick={"seconds": 1.0},
        run=lambda context: measure(context.model, context.budget["seconds"]),
        render=_render,
    ),
)
