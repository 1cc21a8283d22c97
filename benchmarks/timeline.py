"""The app in this process, measured from inside. ``timeline``: where the milliseconds of one request go, the
service under uvicorn with its stage boundaries wrapped to take ``perf_counter`` readings while ``wrk`` sends one
request at a time (each reading belongs to it). ``tracing_cost``: what tracing costs per request, one 224 px JPEG
at a time through the app, tracing off and on in turn, spans exported as a deployment's would be, minus the
network (needs the ``tracing`` extra)."""

from __future__ import annotations

import inspect
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import uvicorn

from benchmarks.harness import HEIGHT, HOST, WIDTH, free_port, get, make_images, request_bodies, wrk_phase
from benchmarks.sections import Section, fmt, table
from service import inputs, middleware, serving, tracing
from service.app import create_app
from service.batcher import Batcher
from service.codecs.classify import ClassifyCodec
from service.settings import Settings, load_settings

# The readings one request takes, in order; each stage runs from one reading to the next.
READINGS = ("app", "handler", "body", "parsed", "decode_start", "decoded", "prepared", "queued", "taken",
            "run_start", "run_end", "resumed", "encoded", "sent")  # fmt: skip
STAGES = ("routing, query validation, dependencies", "body reading", "JSON and base64",
          "image header, hop to a decode thread", "decode (bytes to RGB)", "preprocess (resize, crop, normalise)",
          "hop back to the event loop",
          "queue (until the batcher takes it)", "hop to the inference thread", "run (`OnnxModel.run`, batch 1)",
          "hop back, batcher hands the result over", "encode (top-k, grid, JSON)",
          "response (send through the middleware)")  # fmt: skip
# What is wrapped, and the readings it takes as it is called and as it returns ("" for none).
WRAPPED = (
    (middleware.MetricsMiddleware, "__call__", "app", "sent"), (serving.Serving, "handle", "handler", ""),
    (inputs, "read_body", "", "body"), (serving.Serving, "prepare", "parsed", "queued"),
    (serving.Serving, "_prepare", "decode_start", "prepared"), (Batcher, "submit", "", "resumed"),
    (ClassifyCodec, "encode", "", "encoded"), (Batcher, "_take", "", "taken"),
    (Batcher, "_run_sync", "run_start", "run_end"), (serving.Preprocessor, "__call__", "decoded", ""),
)  # fmt: skip


def _wrapped(original: Callable, mark: Callable[[str], None], before: str, after: str) -> Callable:
    """``original``, taking the reading ``before`` as it is called and ``after`` as it returns (or its awaiting)."""

    async def coroutine(*args: Any, **kwargs: Any) -> Any:
        mark(before)
        result = await original(*args, **kwargs)
        mark(after)
        return result

    def function(*args: Any, **kwargs: Any) -> Any:
        mark(before)
        result = original(*args, **kwargs)
        mark(after)
        return result

    return coroutine if inspect.iscoroutinefunction(original) else function


@contextmanager
def instrumented(mark: Callable[[str], None]) -> Iterator[None]:
    """The service's stage boundaries wrapped to call ``mark`` with their readings, for the ``with`` block."""
    with ExitStack() as stack:
        for owner, name, before, after in WRAPPED:
            stack.enter_context(mock.patch.object(owner, name, _wrapped(getattr(owner, name), mark, before, after)))
        yield


def measure(model: Path, seconds: float = 10.0, images: int = 32) -> dict[str, Any]:
    """One request at a time through the instrumented service: the median of each stage, and the client's view."""
    port, current, requests = free_port(), {}, []  # the readings of the request in flight, and of those answered
    settings = load_settings(model_path=model, host=HOST, port=port, log_level="warning")
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=HOST, port=port, log_level="warning"))
    service = threading.Thread(target=server.run, daemon=True)

    def mark(reading: str) -> None:
        current[reading] = time.perf_counter()
        if reading == "sent":  # its response has been sent
            if current.keys() >= set(READINGS):
                requests.append(dict(current))
            current.clear()

    with instrumented(mark), request_bodies(make_images(images, HEIGHT, width=WIDTH)) as bodies:
        service.start()
        try:
            deadline = time.monotonic() + 60
            while get(port, "/readyz")[0] != 200:
                if not service.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("the instrumented service did not become ready within 60 s")
                time.sleep(0.1)
            wrk_phase(port, bodies, 1, 10**6, 2)  # warm-up, discarded
            requests.clear()
            client = wrk_phase(port, bodies, 1, 10**6, seconds)
        finally:
            server.should_exit = True
            service.join()
    ms = np.array([[r[name] for name in READINGS] for r in requests]).reshape(-1, len(READINGS)) * 1000
    stages = dict(zip(STAGES, np.median(np.diff(ms), axis=0).tolist(), strict=True))  # from each reading to the next
    return {"requests": len(requests), "stages_ms": stages, "service_ms": float(np.median(ms[:, -1] - ms[:, 0])),
            "client_p50_ms": client.p50_ms, "client_p99_ms": client.p99_ms}  # fmt: skip


def _render(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    rows = [[name, fmt(ms, 3)] for name, ms in r["stages_ms"].items()]
    rows += [["sum of the stages", fmt(sum(r["stages_ms"].values()), 3)],
             ["inside the app (median of the whole)", fmt(r["service_ms"], 3)],
             ["client p50 / p99 (wrk)", f"{fmt(r['client_p50_ms'], 3)} / {fmt(r['client_p99_ms'], 3)}"]]  # fmt: skip
    return [f"{r['requests']} requests from one `wrk` connection, one at a time, to the service in the benchmark's own "
            "process with its stage boundaries timestamped (a few microseconds each); the median of each stage.",
            "", *table(["stage", "ms"], rows), ""]  # fmt: skip


def _timed(model: Path, requests: int, traced: bool) -> list[float]:
    """Milliseconds of each of ``requests`` requests after 20 of warm-up, tracing on or off."""
    from fastapi.testclient import TestClient
    from opentelemetry.sdk.trace import TracerProvider, export
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider, original, data, times = TracerProvider(), tracing.from_environment, make_images(1, 224)[0], []
    provider.add_span_processor(export.BatchSpanProcessor(InMemorySpanExporter()))
    tracing.from_environment = (lambda: provider) if traced else original
    try:
        with TestClient(create_app(Settings(model_path=model))) as client:
            while client.get("/readyz").status_code != 200:
                time.sleep(0.05)
            for _ in range(requests + 20):
                start = time.perf_counter()
                if (status := client.post("/classify", files=[("file", data)]).status_code) != 200:
                    raise RuntimeError(f"POST /classify answered {status} with tracing {'on' if traced else 'off'}")
                times.append((time.perf_counter() - start) * 1000)
        return times[20:]
    finally:
        tracing.from_environment = original
        provider.shutdown()


def tracing_cost(model: Path, requests: int = 300) -> dict[str, Any]:
    """Median and mean per request, off and on, over two alternating rounds (drift in load falls on both)."""
    times: dict[str, list[float]] = {"off": [], "on": []}
    for traced in (False, True, False, True):
        times["on" if traced else "off"] += _timed(model, requests // 2, traced)
    summary = {s: {"median_ms": statistics.median(t), "mean_ms": statistics.fmean(t)} for s, t in times.items()}
    return {"requests": requests} | summary


def _render_tracing(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    rows = [[f"tracing {state}", fmt(r[state]["median_ms"], 3), fmt(r[state]["mean_ms"], 3)] for state in ("off", "on")]
    cost = r["on"]["median_ms"] - r["off"]["median_ms"]
    return [f"{r['requests']} requests each way through the app in process (TestClient), one at a time, alternating "
            "off and on twice; spans go to an in-memory exporter through the SDK's batch processor.",
            "", *table(["", "median ms", "mean ms"], rows), "",
            f"Tracing on costs **{cost:+.3f} ms** per request (difference of the medians).", ""]  # fmt: skip


SECTIONS = (
    Section("timeline", "Where the milliseconds of one request go, stage by stage", measure, {"seconds": 1.0}, _render),
    Section("tracing_cost", "What tracing costs per request", tracing_cost, {"requests": 4}, _render_tracing),
)
