"""What the benchmarks share: timing in alternating rounds (``interleaved``: load on a shared machine shifts all
alike), inputs, a service on a loopback port, and Debian's ``wrk`` to load it (``make wrk`` installs it), so that
the client's CPU is not Python's."""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from export.timing import interleaved, round_order  # noqa: F401 (the benchmarks' timing, shared with export)
from service.imaging import decode
from service.model import load_model
from service.preprocess import Preprocessor

HOST = "127.0.0.1"  # loopback only: the benchmarks measure the service they start, nothing else
LUA = Path(__file__).with_name("load.lua")
WIDTH, HEIGHT = 451, 300  # the service benchmarks' photos: a typical one, downscaled
JSON = "application/json"
BOUNDARY = "castream-benchmark-form-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def percentile_ms(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile of latencies in seconds, in milliseconds; NaN for none."""
    values = list(values)
    return float(np.percentile(values, q) * 1000) if values else math.nan


def summarise(seconds: np.ndarray, images: int) -> dict[str, float]:
    """Median and p99 in milliseconds, and images per second at the median, of one step's timings."""
    median = float(np.median(seconds))
    return {"rounds": len(seconds), "p50_ms": median * 1000, "p99_ms": percentile_ms(seconds, 99),
            "images_per_second": images / median}  # fmt: skip


def photo(width: int, height: int, seed: int = 0, grain: float = 6.0, quality: int = 90, kind: str = "JPEG") -> bytes:
    """A deterministic photo to a codec: smooth colour waves with sensor-like noise of ``grain`` levels (standard
    deviation), as a JPEG of ``quality`` or another Pillow format (``kind``). At 12 MP the default grain makes a
    JPEG of about 2.8 MiB; libjpeg's entropy decoding costs by the byte, so the grain sets the decode's time."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    waves = [127 + 90 * np.sin(x / (40 + 13 * c) + y / (57 + 7 * c) + c + seed) for c in range(3)]
    noise = np.random.default_rng(seed).normal(0, grain, (height, width, 3)).astype(np.float32)
    pixels = np.clip(np.stack(waves, axis=-1) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind, **({"quality": quality} if kind == "JPEG" else {}))
    return buffer.getvalue()


def make_images(count: int, size: int, seed: int = 0, width: int | None = None) -> list[bytes]:
    """``count`` distinct photos ``size`` pixels high; their widths vary (1, 1.25 and 1.5 times ``size``) unless
    ``width`` fixes it."""
    return [photo(width or int(size * (1 + 0.25 * (i % 3))), size, seed * 1000 + i) for i in range(count)]


def prepared(prepare: Preprocessor, files: Iterable[tuple[str, bytes]]) -> np.ndarray:
    """Named image files decoded and preprocessed as the service does, stacked [N, 3, crop, crop]."""
    return np.stack([prepare(decode(data, 10**8, name)).input for name, data in files])


def model_images(model: Path, count: int) -> list[bytes]:
    """``count`` distinct photos as high as the model's resize."""
    return make_images(count, load_model(model, ["cpu"]).info.preprocessing.resize)


def model_inputs(model: Path, count: int) -> np.ndarray:
    """``count`` distinct images, decoded and preprocessed as the service does, stacked [count, 3, crop, crop]."""
    preprocessing = load_model(model, ["cpu"]).info.preprocessing  # one session opened, for its metadata
    images = make_images(count, preprocessing.resize)
    return prepared(Preprocessor(preprocessing), ((f"generated {i}", data) for i, data in enumerate(images)))


def json_body(image: bytes) -> bytes:
    """``{"images": ["<base64>"]}`` for one image file: the body of a JSON ``POST /classify``."""
    return json.dumps({"images": [base64.b64encode(image).decode()]}).encode()


def multipart_body(image: bytes) -> bytes:
    """One image file as the form field ``file`` of a ``multipart/form-data`` body (with :data:`MULTIPART`'s
    boundary), as a browser's form or ``curl -F file=@photo.jpg`` sends it."""
    if BOUNDARY.encode() in image:
        raise ValueError(f"the image's bytes contain the multipart boundary {BOUNDARY!r}; change the image or it")
    kind = Image.open(io.BytesIO(image)).format or "octet-stream"  # the header only: no pixel is decoded
    part = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="photo.{kind.lower()}"\r\n'
            f"Content-Type: image/{kind.lower()}\r\n\r\n")  # fmt: skip
    return part.encode() + image + f"\r\n--{BOUNDARY}--\r\n".encode()


@contextmanager
def request_bodies(images: list[bytes], content_type: str = JSON) -> Iterator[list[Path]]:
    """Each image as a request body in a temporary file, for wrk to send, inside the ``with`` block: JSON base64,
    or a multipart form where ``content_type`` is :data:`MULTIPART`."""
    encode = multipart_body if content_type == MULTIPART else json_body
    with tempfile.TemporaryDirectory() as folder:
        suffix = "form" if content_type == MULTIPART else "json"
        paths = [Path(folder) / f"body{i}.{suffix}" for i in range(len(images))]
        for path, image in zip(paths, images, strict=True):
            path.write_bytes(encode(image))
        yield paths


def rss_mib(pid: int) -> float:
    """A process's resident memory in MiB, as Linux reports it (NaN where it does not)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


@contextmanager
def sampled_rss(pid: int, interval_s: float) -> Iterator[list[float]]:
    """A process's resident MiB every ``interval_s`` seconds inside the ``with`` block, and at both its ends."""
    samples, stop = [rss_mib(pid)], threading.Event()

    def sample() -> None:
        while not stop.wait(interval_s):
            samples.append(rss_mib(pid))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()
        samples.append(rss_mib(pid))


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live process descended from it, from the parent ids in Linux's ``/proc/*/stat``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            text = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:  # exited meanwhile
            continue
        if text:  # after "pid (comm) state ", the parent's id; comm may hold spaces and parentheses
            children.setdefault(int(text[text.rindex(")") + 2 :].split()[1]), []).append(int(entry.name))
    tree, stack = [], [pid] if Path(f"/proc/{pid}").exists() else []
    while stack:
        tree.append(current := stack.pop())
        stack.extend(children.get(current, ()))
    return tree


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def get(port: int, path: str, body: bytes | None = None, content_type: str = JSON) -> tuple[int, bytes]:
    """``GET path`` (``POST`` with a body, JSON unless ``content_type`` says otherwise): the status and body;
    status 0 where nothing answered."""
    request = urllib.request.Request(f"http://{HOST}:{port}{path}", body, {"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


class Service:
    """``python -m service`` on a loopback port (a free one by default) with the settings ``env`` adds
    (``CASTREAM_MAX_BATCH_SIZE="16"``, ...), ready once made; stopped by :meth:`stop` or at the end of a ``with``."""

    def __init__(self, model: Path, port: int | None = None, timeout_s: float = 60.0, **env: str):
        self.port, begin = port or free_port(), time.monotonic()
        variables = {"CASTREAM_MODEL_PATH": str(model), "CASTREAM_HOST": HOST, "CASTREAM_PORT": str(self.port),
                     "CASTREAM_LOG_LEVEL": "warning", **env}  # fmt: skip
        self.process = subprocess.Popen([sys.executable, "-m", "service"], env={**os.environ, **variables})
        while get(self.port, "/readyz")[0] != 200:
            if self.process.poll() is not None or time.monotonic() > begin + timeout_s:
                self.stop()
                raise RuntimeError(f"the service did not become ready on port {self.port} (exit {self.process.poll()})")
            time.sleep(0.05)
        self.url, self.ready_s = f"http://{HOST}:{self.port}", time.monotonic() - begin

    def rss_mib(self) -> float:
        return rss_mib(self.process.pid)

    def processes(self) -> int:
        """How many processes the service runs (itself and its descendants), as Linux lists them."""
        return len(process_tree(self.process.pid))

    def stop(self) -> None:
        """Asks the service to drain and stop (SIGINT); kills it after 30 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def fresh_services(
    model: Path, setting: str, values: Sequence[Any], rounds: int, measure: Callable[[Service, Any], dict], **env: str
) -> dict[Any, dict]:
    """``measure(server, value)`` on a fresh service (with ``env``) for each value of the ``CASTREAM_*`` ``setting``,
    in alternating order over ``rounds`` rounds (ABBA...); a value's records averaged figure by figure."""
    records: dict[Any, list[dict]] = {value: [] for value in values}
    for round_ in range(rounds):
        for value in round_order(list(values), round_):
            with Service(model, **env, **{setting: str(value)}) as server:
                records[value].append(measure(server, value))
    return {value: averaged(runs) for value, runs in records.items()}


def averaged(records: list[dict]) -> dict:
    """The key-by-key mean of records of the same shape (a single one as it is)."""
    if len(records) == 1:
        return records[0]
    return {key: averaged([r[key] for r in records]) if isinstance(value, dict) else float(np.mean([r[key] for r in
            records])) for key, value in records[0].items()}  # fmt: skip


@dataclass
class Phase:
    """What the client saw in one phase: answers by status, seconds, and latency percentiles in milliseconds."""

    requests: int
    seconds: float
    statuses: dict[str, int]
    throughput: float  # answers 200 per second
    p50_ms: float
    p99_ms: float
    rejected_p50_ms: float | None = None  # of the 503 answers, where there were any
    rejected_p99_ms: float | None = None
    retry_after: str | None = None


def _run_wrk(command: list[str], threads: int, timeout_s: float) -> tuple[list[str], str, int]:
    """Run wrk to the end of its duration, or until every thread has sent its requests and been answered (the
    script prints a line for each; wrk stops early and reports on SIGINT): ``(stdout lines, stderr, status)``."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        killer = threading.Timer(timeout_s, process.kill)
        killer.start()
        try:
            lines, finished = [], 0
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line.rstrip("\n"))
                finished += line.startswith("castream-thread-done")
                if finished == threads and process.poll() is None:
                    process.send_signal(signal.SIGINT)
                    finished += 1  # once
            stderr = process.stderr.read() if process.stderr else ""
            return lines, stderr, process.wait()
        finally:
            killer.cancel()


def wrk_phase(
    port: int, bodies: list[Path], connections: int, requests: int, seconds: float, rate: float = 0.0,
    target: str = "/classify?top_k=1", content_type: str = JSON,
) -> Phase:  # fmt: skip
    """``connections`` wrk connections, one per thread, POSTing the ``bodies`` (JSON unless ``content_type`` says
    otherwise) in turn to ``target``: closed-loop, or paced at ``rate`` requests/s in all; at most ``requests``
    and about ``seconds`` (wrk runs whole seconds, at least one)."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed; `make wrk` installs Debian's package")
    limit, duration = max(1, math.ceil(requests / connections)), max(1, round(seconds))
    command = [
        *("wrk", "-t", str(connections), "-c", str(connections), "-d", f"{duration}s"),
        *("--timeout", "30s", "-s", str(LUA), f"http://{HOST}:{port}", "--"),
        *(f"{rate / connections:.6f}", str(limit), target, content_type, *map(str, bodies)),
    ]
    stdout, stderr, status = _run_wrk(command, connections, seconds + 120)
    line = next((line for line in stdout if line.startswith("castream-wrk ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no report (exit status {status}): {stderr.strip()[-500:]}")
    report = json.loads(line.split(" ", 1)[1])
    if errors := {kind: count for kind, count in report["socket_errors"].items() if count}:
        logging.getLogger(__name__).warning("wrk socket errors: %s", errors)
    threads = [t for t in report["threads"] if t["statuses"]]
    if not threads:
        logging.getLogger(__name__).warning("wrk: no answer to %s within %d s", target, duration)
        return Phase(0, duration, {}, 0.0, math.nan, math.nan)
    records = [(s, us / 1e6) for t in threads for s, us in zip(t["statuses"], t["latencies_us"], strict=True)]
    elapsed = max(1e-9, (max(t["last_answered"] for t in threads) - min(t["first_sent"] for t in threads)) / 1e6)
    ok, rejected = ([latency for status, latency in records if status == code] for code in (200, 503))
    return Phase(len(records), elapsed, dict(Counter(str(status) for status, _ in records)), len(ok) / elapsed,
                 percentile_ms(ok, 50), percentile_ms(ok, 99), percentile_ms(rejected, 50) if rejected else None,
                 percentile_ms(rejected, 99) if rejected else None,
                 next((t["retry_after"] for t in threads if t["retry_after"]), None))  # fmt: skip
