"""Load test: the service against raw ONNX Runtime, on the same model, images and batch size.

One run measures, side by side:
  * raw ONNX Runtime throughput at the batch size (inputs preprocessed beforehand, and with preprocessing),
  * the service's throughput with ``concurrency`` closed-loop clients sending one image per request,
    and the ratio of the two,
  * client-side p50/p99 latency at concurrency 1 and at ``concurrency``,
  * overload: a small queue under many clients, where the excess gets 503 quickly, then recovery.

The service is started on a free loopback port for each phase and stopped afterwards; every phase is
bounded in requests and in seconds. Use it from Python (``run(LoadConfig(...))``) or the command line:

    python -m benchmarks.load --model models/castream.onnx [--json report.json]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from service.imaging import decode
from service.model import load_model
from service.preprocess import Preprocessor

log = logging.getLogger("benchmarks.load")
HOST = "127.0.0.1"  # loopback only: the script measures the service it starts, nothing else


@dataclass(frozen=True)
class LoadConfig:
    model: Path
    batch_size: int = 8
    concurrency: int = 8
    requests: int = 400  # per phase
    seconds: float = 20.0  # per phase
    images: int = 32  # distinct images, cycled
    max_batch_delay_ms: float = 5.0
    threads: int = 0  # ONNX Runtime intra-op threads for both sides; 0 = its default
    overload_queue: int = 4
    overload_concurrency: int = 48
    overload_requests: int = 600
    start_timeout_s: float = 60.0


@dataclass
class Phase:
    """Closed-loop client results: counts by status, seconds, and latency percentiles in milliseconds."""

    requests: int
    seconds: float
    statuses: dict[str, int]
    throughput: float
    p50_ms: float
    p99_ms: float
    rejected_p50_ms: float | None = None
    rejected_p99_ms: float | None = None
    retry_after: str | None = None


def make_images(count: int, size: int, seed: int = 0) -> list[bytes]:
    """Deterministic JPEGs with smooth structure and noise, ``size`` pixels on the shorter side."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        height, width = size, int(size * (1 + 0.25 * (i % 3)))
        y, x = np.mgrid[0:height, 0:width]
        phase = rng.uniform(0, 6.28, 3)
        waves = [127 + 100 * np.sin(x / (7 + 3 * c) + y / (11 + c) + phase[c]) for c in range(3)]
        pixels = np.stack(waves, axis=-1) + rng.normal(0, 12, (height, width, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def raw_throughput(config: LoadConfig, images: list[bytes]) -> dict[str, float]:
    """Images per second of ``session.run`` alone, and of decode + preprocess + run, at the batch size; and the
    p50/p99 latency in milliseconds of ``session.run`` on one image (the model's own latency).

    The session is opened as the service opens it (same options and threads), so the ratio measures what
    serving adds, not a difference in ONNX Runtime tuning.
    """
    model = load_model(config.model, ["cpu"], config.threads, 0)
    session, prepare = model.session, Preprocessor(model.info.preprocessing)
    inputs = np.stack([prepare(decode(data, 10**8)).input for data in images])
    batches = [
        inputs[np.arange(i, i + config.batch_size) % len(inputs)] for i in range(0, len(inputs), config.batch_size)
    ]
    session.run(None, {"image": batches[0]})  # warm-up
    result = {}
    for name, with_decode in (("run_only", False), ("with_preprocessing", True)):
        done, start = 0, time.perf_counter()
        while done < config.requests and time.perf_counter() - start < config.seconds:
            if with_decode:
                picked = [images[(done + k) % len(images)] for k in range(config.batch_size)]
                batch = np.stack([prepare(decode(data, 10**8)).input for data in picked])
            else:
                batch = batches[(done // config.batch_size) % len(batches)]
            session.run(None, {"image": batch})
            done += config.batch_size
        result[name] = done / (time.perf_counter() - start)
    latencies, start = [], time.perf_counter()
    while len(latencies) < config.requests and time.perf_counter() - start < config.seconds:
        begin = time.perf_counter()
        session.run(None, {"image": inputs[len(latencies) % len(inputs)][None]})
        latencies.append(time.perf_counter() - begin)
    result["batch1_p50_ms"], result["batch1_p99_ms"] = _percentile(latencies, 50), _percentile(latencies, 99)
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@contextmanager
def service(config: LoadConfig, **env: str) -> Iterator[int]:
    """``python -m service`` on a free loopback port; yields the port once /readyz is 200."""
    port = free_port()
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
    process = subprocess.Popen([sys.executable, "-m", "service"], env={**os.environ, **variables})
    try:
        deadline = time.monotonic() + config.start_timeout_s
        while asyncio.run(_get_status(port, "/readyz")) != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not become ready on port {port} (exit code {process.poll()})")
            time.sleep(0.1)
        yield port
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def multipart_request(port: int, image: bytes, query: str = "") -> bytes:
    """The raw bytes of one ``POST /classify[?query]`` with one file, built once and replayed."""
    boundary = "castreamloadboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="image.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    target = f"/classify?{query}" if query else "/classify"
    head = (
        f"POST {target} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, dict]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    await reader.readexactly(int(headers.get("content-length", 0)))
    return int(lines[0].split()[1]), headers


async def _get_status(port: int, path: str) -> int:
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return 0
    try:
        status, _ = await _exchange(reader, writer, f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        return status
    finally:
        writer.close()


async def closed_loop(
    port: int, images: list[bytes], concurrency: int, requests: int, seconds: float, query: str = ""
) -> Phase:
    """``concurrency`` clients on keep-alive connections, each sending its next request when answered.

    ``query`` is added to every request's URL (``attention=overlay``, ...).
    """
    prepared = [multipart_request(port, image, query) for image in images]
    records: list[tuple[int, float, str | None]] = []
    sent = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal sent
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while sent < requests and time.perf_counter() < deadline:
                index, sent = sent, sent + 1
                start = time.perf_counter()
                status, headers = await _exchange(reader, writer, prepared[index % len(prepared)])
                records.append((status, time.perf_counter() - start, headers.get("retry-after")))
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    ok = [latency for status, latency, _ in records if status == 200]
    rejected = [latency for status, latency, _ in records if status == 503]
    statuses: dict[str, int] = {}
    for status, _, _ in records:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    retry = next((value for status, _, value in records if status == 503), None)
    return Phase(
        requests=len(records),
        seconds=elapsed,
        statuses=statuses,
        throughput=len(ok) / elapsed,
        p50_ms=_percentile(ok, 50),
        p99_ms=_percentile(ok, 99),
        rejected_p50_ms=_percentile(rejected, 50) if rejected else None,
        rejected_p99_ms=_percentile(rejected, 99) if rejected else None,
        retry_after=retry,
    )


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def run(config: LoadConfig) -> dict[str, Any]:
    """Every phase, in one process and on one model; returns the report as a dict."""
    info = load_model(config.model, ["cpu"]).info
    images = make_images(config.images, info.preprocessing.resize)
    report: dict[str, Any] = {"config": {**asdict(config), "model": str(config.model)}, "model": info.name}
    log.info("raw ONNX Runtime at batch %d", config.batch_size)
    before = raw_throughput(config, images)
    with service(config) as port:
        asyncio.run(closed_loop(port, images, config.concurrency, config.batch_size * 4, config.seconds))  # warm
        for concurrency in (1, config.concurrency):
            log.info("service at concurrency %d", concurrency)
            phase = asyncio.run(closed_loop(port, images, concurrency, config.requests, config.seconds))
            report[f"service_c{concurrency}"] = asdict(phase)
    # Raw again after the service phases, averaged, so that a change in background load affects both sides.
    after = raw_throughput(config, images)
    raw = report["raw"] = {key: (before[key] + after[key]) / 2 for key in before}
    report["raw_before_after"] = {"before": before, "after": after}
    loaded = report[f"service_c{config.concurrency}"]["throughput"]
    report["ratio_run_only"] = loaded / raw["run_only"]
    report["ratio_with_preprocessing"] = loaded / raw["with_preprocessing"]
    report["overhead_c1_p50_ms"] = report["service_c1"]["p50_ms"] - raw["batch1_p50_ms"]
    queue = {"CASTREAM_MAX_QUEUE": str(config.overload_queue), "CASTREAM_MAX_IMAGES_PER_REQUEST": "1"}
    with service(config, **queue) as port:
        log.info("overload: %d clients, queue of %d images", config.overload_concurrency, config.overload_queue)
        burst = asyncio.run(
            closed_loop(port, images, config.overload_concurrency, config.overload_requests, config.seconds)
        )
        after = asyncio.run(closed_loop(port, images, 1, 20, config.seconds))
        ready = asyncio.run(_get_status(port, "/readyz"))
    report["overload"] = asdict(burst)
    report["recovery"] = {"statuses": after.statuses, "p50_ms": after.p50_ms, "readyz": ready}
    report["recovered"] = after.statuses == {"200": after.requests} and ready == 200
    return report


def format_report(report: dict[str, Any]) -> str:
    config, raw = report["config"], report["raw"]
    c = config["concurrency"]
    burst = report["overload"]
    lines = [
        f"model {report['model']} ({config['model']}), batch size {config['batch_size']}, {os.cpu_count()} CPUs",
        f"raw ONNX Runtime:      {raw['run_only']:8.1f} images/s (session.run only)",
        f"                       {raw['with_preprocessing']:8.1f} images/s (with decode + preprocessing)",
        f"                       p50 {raw['batch1_p50_ms']:7.1f} ms   p99 {raw['batch1_p99_ms']:7.1f} ms "
        "(session.run on one image)",
    ]
    for concurrency in (1, c):
        phase = report[f"service_c{concurrency}"]
        lines.append(
            f"service, c={concurrency:<3}        {phase['throughput']:8.1f} images/s   p50 {phase['p50_ms']:7.1f} ms   "
            f"p99 {phase['p99_ms']:7.1f} ms   {phase['statuses']}"
        )
    lines += [
        f"ratio service c={c} / raw: {report['ratio_run_only']:.2f} (session.run only), "
        f"{report['ratio_with_preprocessing']:.2f} (with preprocessing)",
        f"service p50 at c=1 over the model's own batch-1 p50: {report['overhead_c1_p50_ms']:+.1f} ms",
        f"overload ({config['overload_concurrency']} clients, queue {config['overload_queue']}): {burst['statuses']}, "
        f"503 p50 {burst['rejected_p50_ms'] or float('nan'):.1f} ms p99 {burst['rejected_p99_ms'] or float('nan'):.1f} "
        f"ms (Retry-After {burst['retry_after']}), 200 p50 {burst['p50_ms']:.1f} ms",
        f"recovery: {report['recovery']['statuses']}, /readyz {report['recovery']['readyz']}, "
        f"recovered={report['recovered']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/castream.onnx"))
    for option in fields(LoadConfig):
        if option.name != "model":  # every other knob, with its default and type (seconds are per phase)
            flag = f"--{option.name.replace('_', '-')}"
            parser.add_argument(flag, type=type(option.default), default=option.default)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"--model {str(args.model)!r} does not exist; build it with `make export`")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = {k: v for k, v in vars(args).items() if k != "json"}
    report = run(LoadConfig(**options))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    sys.stdout.write(format_report(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
