"""What tracing costs per request: the same in-process requests with tracing off, then on.

``python -m benchmarks.tracing_cost [--requests N]``: the real app (TestClient) on the default model, one
request at a time, one 224 px photo-like image; tracing on exports to an in-memory exporter through the SDK's
batch processor, as a deployment would (minus the network). Prints the median and mean per request.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from service import tracing
from service.app import create_app
from service.settings import Settings


def _image() -> bytes:
    rng = np.random.default_rng(0)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (224, 224, 3), np.uint8)).save(out, "JPEG")
    return out.getvalue()


def _run(model: Path, requests: int, traced: bool) -> list[float]:
    original = tracing.from_environment
    if traced:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
        tracing.from_environment = lambda: provider
    try:
        data, times = _image(), []
        with TestClient(create_app(Settings(model_path=model))) as client:
            while client.get("/readyz").status_code != 200:
                time.sleep(0.05)
            for i in range(requests + 20):
                start = time.perf_counter()
                assert client.post("/classify", files=[("file", data)]).status_code == 200
                if i >= 20:  # warm-up left out
                    times.append((time.perf_counter() - start) * 1000)
        return times
    finally:
        tracing.from_environment = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/castream.onnx"))
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    results = {}
    for traced in (False, True, False, True):  # interleaved, so drift in load falls on both
        results.setdefault(traced, []).extend(_run(args.model, args.requests // 2, traced))
    for traced, times in results.items():
        label = "on " if traced else "off"
        print(f"tracing {label}: median {statistics.median(times):.3f} ms, mean {statistics.fmean(times):.3f} ms")
    print(f"difference of medians: {statistics.median(results[True]) - statistics.median(results[False]):.3f} ms")


if __name__ == "__main__":
    main()
