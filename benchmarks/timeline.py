"""Where the milliseconds of one request go: the service timestamps each stage while wrk sends one request at a time.

The service runs in this process under uvicorn on a loopback port, with its stage boundaries wrapped to take
``perf_counter`` readings (a few microseconds each); ``wrk`` (one connection) sends the same JSON base64 image
to ``POST /classify?top_k=1`` as ``benchmarks.load`` does. With one request in flight at a time, each reading
belongs to the one request; the report gives the median of each stage over all requests, and the client's
latency beside the service's own time (the rest is HTTP on the wire, uvicorn's parsing and the client).

    python -m benchmarks.timeline --model models/castream.onnx --seconds 10
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn

from benchmarks.harness import HOST, free_port, json_body, make_images
from benchmarks.load import LUA, QUERY
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


def _wrap(owner: Any, name: str, before: Callable[[], None] | None, after: Callable[[], None] | None) -> None:
    original = getattr(owner, name)
    if inspect.iscoroutinefunction(original):

        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            if before:
                before()
            result = await original(*args, **kwargs)
            if after:
                after()
            return result

    else:

        def wrapped(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            if before:
                before()
            result = original(*args, **kwargs)
            if after:
                after()
            return result

    setattr(owner, name, wrapped)


def instrument(timeline: Timeline) -> None:
    """Wrap the stage boundaries of the service's code (this process only)."""
    mark = timeline.mark
    _wrap(middleware.MetricsMiddleware, "__call__", lambda: mark("app"), timeline.finish)
    _wrap(classify, "read_images", lambda: mark("handler"), None)
    _wrap(inputs, "read_body", None, lambda: mark("body"))
    _wrap(serving.Serving, "prepare", lambda: mark("parsed"), lambda: mark("queued"))
    _wrap(serving.Serving, "_prepare", lambda: mark("decode_start"), lambda: mark("prepared"))
    _wrap(serving.Serving, "infer", None, lambda: mark("resumed"))
    _wrap(serving.Serving, "encode", None, lambda: mark("encoded"))
    _wrap(Batcher, "_take", None, lambda: mark("taken"))
    _wrap(Batcher, "_run_sync", lambda: mark("run_start"), lambda: mark("run_end"))
    original = serving.Preprocessor.__call__

    def preprocess(self: Any, *args: Any, **kwargs: Any) -> Any:
        mark("decoded")
        return original(self, *args, **kwargs)

    serving.Preprocessor.__call__ = preprocess  # type: ignore[method-assign]


def measure(model: Path, seconds: float, images: int = 32) -> dict[str, Any]:
    timeline = Timeline()
    instrument(timeline)
    port = free_port()
    settings = load_settings(model_path=model, host=HOST, port=port, log_level="warning")
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=HOST, port=port, log_level="warning"))
    latencies: list[float] = []

    def drive() -> None:
        while True:
            try:
                if urllib.request.urlopen(f"http://{HOST}:{port}/readyz").status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        with tempfile.TemporaryDirectory() as folder:
            bodies = []
            for i, image in enumerate(make_images(images, 300, width=451)):
                path = Path(folder) / f"body{i}.json"
                path.write_bytes(json_body(image))
                bodies.append(str(path))
            command = [
                "wrk",
                "-t1",
                "-c1",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                str(LUA),
                f"http://{HOST}:{port}",
                "--",
                "0",
                "1000000",
                f"/classify?{QUERY}",
                "application/json",
                *bodies,
            ]
            for warm in (True, False):  # the first pass warms up and is discarded
                out = subprocess.run(command if not warm else [*command[:3], "-d2s", *command[4:]],
                                     capture_output=True, text=True, check=True).stdout  # fmt: skip
                if warm:
                    timeline.requests.clear()
                    continue
                line = next(line for line in out.splitlines() if line.startswith("castream-wrk "))
                report = json.loads(line.split(" ", 1)[1])
                latencies.extend(v / 1000 for t in report["threads"] for v in t["latencies_us"])
        server.should_exit = True

    threading.Thread(target=drive, daemon=True).start()
    server.run()
    requests = timeline.requests
    stages = {
        name: float(np.median([r[end] - r[start] for r in requests]) * 1000) for name, (start, end) in STAGES.items()
    }
    inside = float(np.median([r["sent"] - r["app"] for r in requests]) * 1000)
    return {
        "requests": len(requests),
        "stages_ms": stages,
        "service_ms": inside,
        "client_p50_ms": float(np.percentile(latencies, 50)),
        "client_p99_ms": float(np.percentile(latencies, 99)),
    }


def format_report(result: dict[str, Any]) -> str:
    lines = [f"{result['requests']} requests, one at a time; median milliseconds per stage:"]
    lines += [f"  {name:45s} {ms:7.3f}" for name, ms in result["stages_ms"].items()]
    lines += [
        f"  {'sum of the stages':45s} {sum(result['stages_ms'].values()):7.3f}",
        f"  {'inside the app (median of the whole)':45s} {result['service_ms']:7.3f}",
        f"  {'client p50 / p99 (wrk)':45s} {result['client_p50_ms']:7.3f} / {result['client_p99_ms']:.3f}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.timeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/castream.onnx"))
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sys.stdout.write(format_report(measure(args.model, args.seconds)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
