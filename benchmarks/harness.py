"""What the benchmarks share: timing in alternating rounds, inputs, and a local service to load.

Timing: on a shared machine the load changes from second to second, so things compared are timed round by
round, each round running every one once, in alternating order (``interleaved``; ``export.timing`` holds
it, since the export's own speed check uses it too).

Inputs: ``make_images`` (JPEGs) and ``model_inputs`` (the same, preprocessed as the service does).

Load: ``service_process`` starts ``python -m service`` on a loopback port and ``closed_loop`` drives it from
Python on keep-alive connections, from prepared request bytes (multipart or JSON base64), closed-loop or
paced at a rate. ``benchmarks.load`` drives it with ``wrk`` where that is installed, so that the client's
own CPU is not Python's.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from export.timing import interleaved, round_order  # noqa: F401 (the benchmarks' timing, shared with export)
from service.imaging import decode
from service.model import load_model
from service.preprocess import Preprocessor

HOST = "127.0.0.1"  # loopback only: the benchmarks measure the service they start, nothing else


def summarise(seconds: np.ndarray, images: int) -> dict[str, float]:
    """Median and p99 in milliseconds, and images per second at the median, of one step's timings."""
    median = float(np.median(seconds))
    return {"rounds": len(seconds), "p50_ms": median * 1000, "p99_ms": percentile_ms(list(seconds), 99),
            "images_per_second": images / median}  # fmt: skip


def percentile_ms(values: list[float], q: float) -> float:
    """The ``q``-th percentile of latencies in seconds, in milliseconds; NaN for none."""
    return float(np.percentile(values, q) * 1000) if len(values) else float("nan")


@dataclass(frozen=True)
class LoadConfig:
    model: Path
    batch_size: int = 8  # the service's default
    concurrency: int = 8
    high_concurrency: int = 32
    requests: int = 400  # per phase
    seconds: float = 20.0  # per phase
    images: int = 32  # distinct images, cycled
    image_width: int = 451  # benchmarks.load's images; the others use the model's resize
    image_height: int = 300
    max_batch_delay_ms: float = 0.0  # the service's default: a batch runs as soon as the model is free
    threads: int = 0  # ONNX Runtime intra-op threads for both sides; 0 = its default
    client: str = "auto"  # benchmarks.load: wrk where installed, else Python; or "wrk", "python"
    overload_factor: float = 2.0  # requests offered, as a multiple of the measured capacity
    overload_queue: int = 16
    overload_concurrency: int = 64  # connections offering the overload
    overload_requests: int = 20000
    start_timeout_s: float = 60.0


@dataclass
class Phase:
    """Client results of one phase: counts by status, seconds, and latency percentiles in milliseconds."""

    requests: int
    seconds: float
    statuses: dict[str, int]
    throughput: float
    p50_ms: float
    p99_ms: float
    rejected_p50_ms: float | None = None
    rejected_p99_ms: float | None = None
    retry_after: str | None = None


def make_images(count: int, size: int, seed: int = 0, width: int | None = None) -> list[bytes]:
    """Deterministic JPEGs with smooth structure and noise, ``size`` pixels on the shorter side.

    Their widths vary (1, 1.25 and 1.5 times ``size``) unless ``width`` fixes it.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        height, wide = size, width or int(size * (1 + 0.25 * (i % 3)))
        y, x = np.mgrid[0:height, 0:wide]
        phase = rng.uniform(0, 6.28, 3)
        waves = [127 + 100 * np.sin(x / (7 + 3 * c) + y / (11 + c) + phase[c]) for c in range(3)]
        pixels = np.stack(waves, axis=-1) + rng.normal(0, 12, (height, wide, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def prepared(prepare: Preprocessor, files: Iterable[tuple[str, bytes]]) -> np.ndarray:
    """Named image files decoded and preprocessed as the service does, stacked [N, 3, crop, crop]."""
    return np.stack([prepare(decode(data, 10**8, name)).input for name, data in files])


def model_inputs(model_path: Path, count: int) -> np.ndarray:
    """``count`` distinct images, decoded and preprocessed as the service does, stacked [count, 3, crop, crop]."""
    info = load_model(model_path, ["cpu"]).info
    images = make_images(count, info.preprocessing.resize)
    return prepared(Preprocessor(info.preprocessing), ((f"generated {i}", data) for i, data in enumerate(images)))


def rss_mib(pid: int) -> float:
    """A process's resident memory in MiB, as Linux reports it (NaN where it does not)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Running:
    """A started service: its port, its process, and how long it took to become ready."""

    port: int
    process: subprocess.Popen
    ready_s: float

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def rss_mib(self) -> float:
        return rss_mib(self.process.pid)


def start_service(config: LoadConfig, port: int | None = None, **env: str) -> Running:
    """``python -m service`` on a loopback port (a free one by default), returned once /readyz is 200."""
    port = port or free_port()
    variables = {
        "CASTREAM_MODEL_PATH": str(config.model),
        "CASTREAM_HOST": HOST,
        "CASTREAM_PORT": str(port),
        "CASTREAM_MAX_BATCH_SIZE": str(config.batch_size),
        "CASTREAM_MAX_BATCH_DELAY_MS": str(config.max_batch_delay_ms),
        "CASTREAM_INTRA_OP_THREADS": str(config.threads),
        "CASTREAM_LOG_LEVEL": "warning",
        **env,
    }
    begin = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "service"], env={**os.environ, **variables})
    while asyncio.run(get_status(port, "/readyz")) != 200:
        if process.poll() is not None or time.monotonic() > begin + config.start_timeout_s:
            stop_service(process)
            raise RuntimeError(f"the service did not become ready on port {port} (exit code {process.poll()})")
        time.sleep(0.05)
    return Running(port, process, time.monotonic() - begin)


def stop_service(process: subprocess.Popen) -> None:
    """Asks the service to drain and stop (SIGINT); kills it after 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def service_process(config: LoadConfig, **env: str) -> Iterator[Running]:
    """:func:`start_service` for the ``with`` block, stopped after it."""
    running = start_service(config, **env)
    try:
        yield running
    finally:
        stop_service(running.process)


def http_request(port: int, target: str, body: bytes, content_type: str) -> bytes:
    """The raw bytes of one ``POST target``, built once and replayed."""
    head = f"POST {target} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: {content_type}\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def multipart_request(port: int, image: bytes, query: str = "") -> bytes:
    """One ``POST /classify[?query]`` with one file."""
    boundary = "castreamloadboundary"
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="image.jpg"\r\n'
    body = f"{part}Content-Type: image/jpeg\r\n\r\n".encode() + image + f"\r\n--{boundary}--\r\n".encode()
    target = f"/classify?{query}" if query else "/classify"
    return http_request(port, target, body, f"multipart/form-data; boundary={boundary}")


def json_request(port: int, image: bytes, query: str = "") -> bytes:
    """One ``POST /classify[?query]`` with the image as JSON base64."""
    return http_request(port, f"/classify?{query}" if query else "/classify", json_body(image), "application/json")


def json_body(image: bytes) -> bytes:
    """``{"images": ["<base64>"]}`` for one image file."""
    return json.dumps({"images": [base64.b64encode(image).decode()]}).encode()


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, dict, bytes]:
    """Sends one request on a keep-alive connection; returns its status, headers and body."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return int(lines[0].split()[1]), headers, body


async def get_status(port: int, path: str) -> int:
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return 0
    try:
        return (await exchange(reader, writer, f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()))[0]
    except (OSError, asyncio.IncompleteReadError):
        return 0
    finally:
        writer.close()


async def closed_loop(
    port: int, images: list[bytes], concurrency: int, requests: int, seconds: float, query: str = "",
    body: str = "multipart", rate: float = 0.0,
) -> Phase:  # fmt: skip
    """``concurrency`` clients on keep-alive connections, each sending its next request when answered.

    ``query`` is added to every request's URL (``attention=overlay``, ...); ``body`` is ``multipart`` or
    ``json`` (base64). With a ``rate`` (requests per second, all clients together) request ``i`` is not sent
    before ``i / rate`` seconds into the phase: an open loop, as long as a client is free at that time.
    """
    build = json_request if body == "json" else multipart_request
    ready = [build(port, image, query) for image in images]
    records: list[tuple[int, float, str | None]] = []
    sent, begin = 0, time.perf_counter()

    async def client() -> None:
        nonlocal sent
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while sent < requests and time.perf_counter() < begin + seconds:
                index, sent = sent, sent + 1
                if rate > 0:
                    await asyncio.sleep(max(0.0, begin + index / rate - time.perf_counter()))
                start = time.perf_counter()
                status, headers, _ = await exchange(reader, writer, ready[index % len(ready)])
                records.append((status, time.perf_counter() - start, headers.get("retry-after")))
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return phase_of(records, time.perf_counter() - begin)


def phase_of(records: list[tuple[int, float, str | None]], elapsed: float) -> Phase:
    """A phase's summary from ``(status, latency in seconds, Retry-After)`` per answer, over ``elapsed`` seconds."""
    ok = [latency for status, latency, _ in records if status == 200]
    rejected = [latency for status, latency, _ in records if status == 503]
    statuses: dict[str, int] = {}
    for status, _, _ in records:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return Phase(
        requests=len(records),
        seconds=elapsed,
        statuses=statuses,
        throughput=len(ok) / elapsed,
        p50_ms=percentile_ms(ok, 50),
        p99_ms=percentile_ms(ok, 99),
        rejected_p50_ms=percentile_ms(rejected, 50) if rejected else None,
        rejected_p99_ms=percentile_ms(rejected, 99) if rejected else None,
        retry_after=next((value for status, _, value in records if status == 503), None),
    )
