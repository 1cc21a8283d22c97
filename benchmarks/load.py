"""Load test: the service measured from outside, beside the same work done in process, on one model and image set.

One run measures, side by side:
  * the in-process work of one request (JSON, base64, decode, preprocess, a one-image ``run``): p50 and p99;
    and images per second at the batch size, ``run`` alone and with the batch's images decoded serially first;
  * the service from an outside client on loopback (``wrk`` with ``benchmarks/load.lua``, one JSON base64
    image per ``POST /classify?top_k=1``): p50, p99 and throughput at concurrency 1, 8 and 32;
  * overload: requests paced at twice the measured capacity, on a service with a short queue: goodput, the
    share answered 503 and how fast, p99 of the answered, the service's memory over the phase; then recovery.

Where ``wrk`` is missing (``make wrk`` installs Debian's), a Python client stands in and the report says so:
it shares the CPU with the service. The in-process work is measured before and after the service phases
and averaged. Every phase is bounded in seconds and requests. From Python, ``run(LoadConfig(...))``; or
``python -m benchmarks load --model models/castream.onnx``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import (
    HOST,
    LoadConfig,
    Phase,
    closed_loop,
    get_status,
    json_body,
    make_images,
    percentile_ms,
    phase_of,
    prepared,
    rss_mib,
    service_process,
)
from benchmarks.sections import Aim, Context, Section, dig, fmt, pct, table
from service.inputs import parse_json
from service.model import load_model
from service.preprocess import Preprocessor

log = logging.getLogger("benchmarks.load")

LUA = Path(__file__).with_name("load.lua")
QUERY = "top_k=1"
WORK_KEYS = ("request_p50_ms", "request_p99_ms", "run_only", "serial_decode")


def work_in_process(config: LoadConfig, images: list[bytes], seconds: float) -> dict[str, float]:
    """The service's own work without the service: one request's p50/p99 in ms, and batch images per second.

    The model is opened as the service opens it (same options and threads) and runs through the same
    ``OnnxModel.run``; a request's work is what the service does for it besides HTTP: JSON, base64, decode,
    preprocess, and a one-image run.
    """
    model = load_model(config.model, ["cpu"], config.threads, 0)
    prepare = Preprocessor(model.info.preprocessing)
    bodies = [json_body(image) for image in images]

    def request(body: bytes) -> None:
        model.run(prepared(prepare, parse_json(body)))

    def decoded(start: int) -> np.ndarray:
        picked = [bodies[(start + k) % len(bodies)] for k in range(config.batch_size)]
        return prepared(prepare, (file for body in picked for file in parse_json(body)))

    request(bodies[0])  # warm-up
    model.run(decoded(0))
    latencies: list[float] = []
    begin = time.perf_counter()
    while len(latencies) < config.requests and time.perf_counter() - begin < seconds:
        start = time.perf_counter()
        request(bodies[len(latencies) % len(bodies)])
        latencies.append(time.perf_counter() - start)
    result = {"request_p50_ms": percentile_ms(latencies, 50), "request_p99_ms": percentile_ms(latencies, 99)}
    batches = [decoded(i) for i in range(0, len(bodies), config.batch_size)]
    for name, serial in (("run_only", False), ("serial_decode", True)):
        done, begin = 0, time.perf_counter()
        while done < config.requests and time.perf_counter() - begin < seconds:
            model.run(decoded(done) if serial else batches[(done // config.batch_size) % len(batches)])
            done += config.batch_size
        result[name] = done / (time.perf_counter() - begin)
    return result


def body_files(folder: Path, images: list[bytes]) -> list[Path]:
    """Each image as a JSON base64 request body in a file of ``folder``, for wrk to send."""
    paths = [folder / f"body{i}.json" for i in range(len(images))]
    for path, image in zip(paths, images, strict=True):
        path.write_bytes(json_body(image))
    return paths


def wrk_phase(
    port: int, bodies: list[Path], connections: int, requests: int, seconds: float, rate: float = 0.0
) -> Phase:
    """``connections`` wrk connections, one per thread, closed-loop or paced at ``rate`` requests/s in all."""
    limit = max(1, math.ceil(requests / connections))
    command = [
        *("wrk", "-t", str(connections), "-c", str(connections), "-d", f"{max(1, round(seconds))}s"),
        *("--timeout", "30s", "-s", str(LUA), f"http://{HOST}:{port}", "--"),
        *(f"{rate / connections:.6f}", str(limit), f"/classify?{QUERY}", "application/json", *map(str, bodies)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120, check=False)
    line = next((line for line in done.stdout.splitlines() if line.startswith("castream-wrk ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no report (exit status {done.returncode}): {done.stderr.strip()[-500:]}")
    report = json.loads(line.split(" ", 1)[1])
    threads = [t for t in report["threads"] if t["statuses"]]
    records = [
        (status, latency / 1e6, t["retry_after"] or None)
        for t in threads
        for status, latency in zip(t["statuses"], t["latencies_us"], strict=True)
    ]
    elapsed = (max(t["last_answered"] for t in threads) - min(t["first_sent"] for t in threads)) / 1e6
    phase = phase_of(records, max(elapsed, 1e-9))
    if phase.retry_after is None:
        phase.retry_after = next((t["retry_after"] for t in threads if t["retry_after"]), None)
    errors = {k: v for k, v in report["socket_errors"].items() if v}
    if errors:
        log.warning("wrk socket errors: %s", errors)
    return phase


class Memory:
    """Samples a process's resident memory (MiB) every ``interval_s`` seconds inside a ``with`` block."""

    def __init__(self, pid: int, interval_s: float = 0.2):
        self.pid, self.interval_s, self.samples, self._stop = pid, interval_s, [rss_mib(pid)], threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append(rss_mib(self.pid))

    def __enter__(self) -> Memory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(rss_mib(self.pid))

    def summary(self) -> dict[str, float]:
        """Resident MiB at the start, peak and end, and the growth over the whole and over its second half."""
        start, middle, end = self.samples[0], self.samples[len(self.samples) // 2], self.samples[-1]
        return {"start_mib": start, "peak_mib": max(self.samples), "end_mib": end, "growth": end / start - 1,
                "second_half_growth": end / middle - 1}  # fmt: skip


def run(config: LoadConfig) -> dict[str, Any]:
    """Every phase, in one process and on one model; returns the report as a dict."""
    info = load_model(config.model, ["cpu"]).info
    images = make_images(config.images, config.image_height, width=config.image_width)
    client = "wrk" if config.client == "wrk" or (config.client == "auto" and shutil.which("wrk")) else "python"
    report: dict[str, Any] = {"config": {**asdict(config), "model": str(config.model)}, "model": info.name}
    report["client"] = client
    if client == "python":
        log.warning("wrk not found (`make wrk` installs it): a Python client stands in, sharing the CPU")
    concurrencies = (1, config.concurrency, config.high_concurrency)
    with tempfile.TemporaryDirectory() as folder:
        bodies = body_files(Path(folder), images)

        def phase(port: int, connections: int, requests: int, seconds: float, rate: float = 0.0) -> Phase:
            if client == "wrk":
                return wrk_phase(port, bodies, connections, requests, seconds, rate)
            return asyncio.run(closed_loop(port, images, connections, requests, seconds, QUERY, "json", rate))

        log.info("in-process work at batch 1 and %d", config.batch_size)
        before = work_in_process(config, images, config.seconds / 2)
        with service_process(config) as server:
            port = server.port
            phase(port, config.high_concurrency, config.high_concurrency * 8, min(3.0, config.seconds))  # warm-up
            for concurrency in concurrencies:
                log.info("service at concurrency %d", concurrency)
                report[f"service_c{concurrency}"] = asdict(phase(port, concurrency, config.requests, config.seconds))
        after = work_in_process(config, images, config.seconds / 2)
        work = report["work"] = {key: (before[key] + after[key]) / 2 for key in WORK_KEYS}
        report["work_before_after"] = {"before": before, "after": after}
        capacity = report["capacity"] = max(report[f"service_c{c}"]["throughput"] for c in concurrencies[1:])
        rate = config.overload_factor * capacity
        queue = {"CASTREAM_MAX_QUEUE": str(config.overload_queue), "CASTREAM_MAX_IMAGES_PER_REQUEST": "1"}
        with service_process(config, **queue) as server:
            port = server.port
            # Warm-up at the overload itself, so that the phase measures the steady state (buffers, arenas).
            phase(port, config.overload_concurrency, config.overload_requests, min(3.0, config.seconds), rate)
            log.info("overload: %.0f requests/s on %d connections, queue of %d", rate, config.overload_concurrency,
                     config.overload_queue)  # fmt: skip
            with Memory(server.process.pid) as memory:
                burst = phase(port, config.overload_concurrency, config.overload_requests, config.seconds, rate)
            after_burst = phase(port, 1, 20, min(5.0, config.seconds))
            ready = asyncio.run(get_status(port, "/readyz"))
    c1 = report["service_c1"]
    report["overhead_c1_p50_ms"] = c1["p50_ms"] - work["request_p50_ms"]
    report["overhead_c1_p99_ms"] = c1["p99_ms"] - work["request_p99_ms"]
    for concurrency in concurrencies[1:]:
        loaded = report[f"service_c{concurrency}"]["throughput"]
        report[f"ratio_c{concurrency}_serial_decode"] = loaded / work["serial_decode"]
        report[f"ratio_c{concurrency}_run_only"] = loaded / work["run_only"]
    high, low = report[f"service_c{config.high_concurrency}"], report[f"service_c{config.concurrency}"]
    report["ratio_high_low"] = high["throughput"] / low["throughput"]
    rejected = burst.statuses.get("503", 0)
    report["overload"] = {
        **asdict(burst),
        "offered_per_second": rate,
        "sent_per_second": burst.requests / burst.seconds,
        "goodput_ratio": burst.throughput / capacity,
        "rejected_share": rejected / burst.requests if burst.requests else math.nan,
        "memory": memory.summary(),
    }
    report["recovery"] = {"statuses": after_burst.statuses, "p50_ms": after_burst.p50_ms, "readyz": ready}
    report["recovered"] = after_burst.statuses == {"200": after_burst.requests} and ready == 200
    return report


def _run(context: Context) -> dict[str, Any]:
    return run(LoadConfig(model=context.model, requests=context.budget["requests"], seconds=context.budget["seconds"]))


def _aims(result: dict[str, Any] | None) -> list[Aim]:
    c = dig(result, "config", "concurrency") or 8
    high = dig(result, "config", "high_concurrency") or 32
    return [
        Aim("service p50 at concurrency 1 over the in-process work's p50", dig(result, "overhead_c1_p50_ms"), 2, False,
            " ms"),
        Aim("service p99 at concurrency 1 over the in-process work's p99", dig(result, "overhead_c1_p99_ms"), 5, False,
            " ms"),
        Aim(f"throughput at concurrency {c} / in-process batch, serial decoding",
            dig(result, f"ratio_c{c}_serial_decode"), 1.0, True),
        Aim(f"throughput at concurrency {high} / in-process batch, serial decoding",
            dig(result, f"ratio_c{high}_serial_decode"), 1.0, True),
        Aim(f"throughput at concurrency {high} / at {c}", dig(result, "ratio_high_low"), 1.0, True),
        Aim("overload at twice capacity: goodput / capacity", dig(result, "overload", "goodput_ratio"), 0.9, True),
        Aim("overload: p99 of the 503 answers", dig(result, "overload", "rejected_p99_ms"), 50, False, " ms"),
        Aim("overload: the service's memory growth over the phase", _growth(result), 5, False, " %"),
    ]  # fmt: skip


def _growth(result: dict[str, Any] | None) -> float | None:
    growth = dig(result, "overload", "memory", "growth")
    return None if growth is None else growth * 100


def _render(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    config, work, burst = r["config"], r["work"], r["overload"]
    c, high, b = config["concurrency"], config["high_concurrency"], config["batch_size"]
    client = (
        "`wrk` (Debian's package) with `benchmarks/load.lua`, one connection per thread"
        if r["client"] == "wrk"
        else "a Python asyncio client (**wrk was not installed**: this client shares the CPU with the service)"
    )
    lines = [
        f"The same {config['images']} JPEGs ({config['image_width']}x{config['image_height']}), each request one "
        f"image as JSON base64 to `POST /classify?{QUERY}`, from {client}, on loopback. The in-process work is the "
        "service's code without the service (same model options and threads), measured before and after the "
        "service phases and averaged.",
        "",
    ]
    rows = [
        ["in process: one request's work (JSON, base64, decode, preprocess, run at batch 1)",
         fmt(1000 / work["request_p50_ms"]), fmt(work["request_p50_ms"], 2), fmt(work["request_p99_ms"], 2)],
        [f"in process: `run` at batch {b}", fmt(work["run_only"]), "", ""],
        [f"in process: batch {b}, its images decoded serially first", fmt(work["serial_decode"]), "", ""],
    ]  # fmt: skip
    for concurrency in (1, c, high):
        phase = r[f"service_c{concurrency}"]
        rows.append(
            [f"service, concurrency {concurrency}", fmt(phase["throughput"]), fmt(phase["p50_ms"], 2),
             fmt(phase["p99_ms"], 2)]
        )  # fmt: skip
    rows.append(
        [f"service, overload: {burst['offered_per_second']:.0f} requests/s offered (answered ones)",
         fmt(burst["throughput"]), fmt(burst["p50_ms"], 2), fmt(burst["p99_ms"], 2)]
    )  # fmt: skip
    lines += table(["", "images/s", "p50 ms", "p99 ms"], rows)
    memory, recovery = burst["memory"], r["recovery"]
    lines += [
        "",
        f"- Concurrency 1 over the in-process work: p50 **{r['overhead_c1_p50_ms']:+.2f} ms**, p99 "
        f"**{r['overhead_c1_p99_ms']:+.2f} ms** (HTTP, body reading, thread hand-offs, queue, response).",
        f"- Throughput against the in-process batch of {b} with serial decoding: "
        f"**{r[f'ratio_c{c}_serial_decode']:.2f}** at concurrency {c}, "
        f"**{r[f'ratio_c{high}_serial_decode']:.2f}** at {high} "
        f"({r[f'ratio_c{c}_run_only']:.2f} and {r[f'ratio_c{high}_run_only']:.2f} of `run` alone); "
        f"concurrency {high} / {c}: {r['ratio_high_low']:.2f}.",
        f"- Overload, paced at {config['overload_factor']:g}x the capacity ({r['capacity']:.1f} requests/s, the "
        f"better of concurrency {c} and {high}) on {config['overload_concurrency']} connections, queue of "
        f"{config['overload_queue']} images: {burst['sent_per_second']:.0f} requests/s sent, answers "
        f"{burst['statuses']}; goodput {burst['throughput']:.1f} requests/s = **{burst['goodput_ratio']:.2f}** of "
        f"capacity; {pct(burst['rejected_share'])} answered 503 (p50 {fmt(burst['rejected_p50_ms'], 2)} ms, p99 "
        f"**{fmt(burst['rejected_p99_ms'], 2)} ms**, `Retry-After: {burst['retry_after']}`); the service's memory "
        f"{memory['start_mib']:.0f} MiB before, {memory['peak_mib']:.0f} at most, {memory['end_mib']:.0f} after "
        f"({memory['growth'] * 100:+.1f} % over the phase, {memory['second_half_growth'] * 100:+.1f} % over its second "
        f"half; the phase followed a warm-up at the same rate). Afterwards {recovery['statuses']} at p50 "
        f"{fmt(recovery['p50_ms'], 2)} ms and `/readyz` {recovery['readyz']}: "
        f"{'recovered' if r['recovered'] else '**did not recover**'}.",
        "",
    ]
    return lines


SECTIONS = (
    Section(
        "load",
        "The service from outside, against its own work in process",
        full={"requests": 20000, "seconds": 10.0},
        quick={"requests": 24, "seconds": 2.0},
        run=_run,
        render=_render,
        aims=_aims,
    ),
)
