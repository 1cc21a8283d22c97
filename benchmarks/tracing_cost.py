"""What tracing costs per request: the real app in process, one 224 px JPEG at a time, tracing off and on in turn;
spans are exported as a deployment's would be, minus the network. Needs the ``tracing`` extra."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import make_images
from benchmarks.sections import Section, fmt, table
from service import tracing
from service.app import create_app
from service.settings import Settings


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


def measure(model: Path, requests: int = 300) -> dict[str, Any]:
    """Median and mean per request, off and on, over two alternating rounds (drift in load falls on both)."""
    times: dict[str, list[float]] = {"off": [], "on": []}
    for traced in (False, True, False, True):
        times["on" if traced else "off"] += _timed(model, requests // 2, traced)
    summary = {s: {"median_ms": statistics.median(t), "mean_ms": statistics.fmean(t)} for s, t in times.items()}
    return {"requests": requests} | summary


def _render(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    rows = [[f"tracing {state}", fmt(r[state]["median_ms"], 3), fmt(r[state]["mean_ms"], 3)] for state in ("off", "on")]
    cost = r["on"]["median_ms"] - r["off"]["median_ms"]
    return [f"{r['requests']} requests each way through the app in process (TestClient), one at a time, alternating "
            "off and on twice; spans go to an in-memory exporter through the SDK's batch processor.",
            "", *table(["", "median ms", "mean ms"], rows), "",
            f"Tracing on costs **{cost:+.3f} ms** per request (difference of the medians).", ""]  # fmt: skip


SECTIONS = (Section("tracing_cost", "What tracing costs per request", measure, {"requests": 4}, _render),)
