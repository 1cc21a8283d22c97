"""The service from outside (``wrk`` on loopback) beside the same work done in process, on one model and image set;
then an overload at twice the measured capacity on a short queue, and the recovery after it."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.sections import Aim, Section, counts, dig, fmt, pct, table
from service.inputs import parse_json
from service.model import load_model
from service.preprocess import Preprocessor

log = logging.getLogger(__name__)

WIDTH, HEIGHT = 451, 300  # the images' size: a typical photo, downscaled


def work_in_process(model: Path, images: list[bytes], batch_size: int, requests: int, seconds: float) -> dict:
    """The service's own work without the service, with the model opened as the service opens it: one request's
    p50/p99 in ms (JSON, base64, decode, preprocess, a one-image run), and images per second at ``batch_size``,
    ``run`` alone (``run_only``) and with the batch's images decoded serially first (``serial_decode``)."""
    onnx, bodies = load_model(model, ["cpu"], 0, 0), [harness.json_body(image) for image in images]
    prepare = Preprocessor(onnx.info.preprocessing)

    def decoded(start: int) -> Any:
        picked = [bodies[(start + k) % len(bodies)] for k in range(batch_size)]
        return harness.prepared(prepare, (file for body in picked for file in parse_json(body)))

    onnx.run(decoded(0))  # warm-up
    latencies: list[float] = []
    begin = time.perf_counter()
    while len(latencies) < requests and time.perf_counter() - begin < seconds:
        start = time.perf_counter()
        onnx.run(harness.prepared(prepare, parse_json(bodies[len(latencies) % len(bodies)])))
        latencies.append(time.perf_counter() - start)
    result = {
        "request_p50_ms": harness.percentile_ms(latencies, 50),
        "request_p99_ms": harness.percentile_ms(latencies, 99),
    }
    batches = [decoded(i) for i in range(0, len(bodies), batch_size)]
    for name, serial in (("run_only", False), ("serial_decode", True)):
        done, begin = 0, time.perf_counter()
        while done < requests and time.perf_counter() - begin < seconds:
            onnx.run(decoded(done) if serial else batches[(done // batch_size) % len(batches)])
            done += batch_size
        result[name] = done / (time.perf_counter() - begin)
    return result


def run(
    model: Path, requests: int = 20000, seconds: float = 10.0, batch_size: int = 8, concurrency: int = 8,
    high_concurrency: int = 32, images: int = 32, overload_factor: float = 2.0, overload_queue: int = 16,
    overload_concurrency: int = 64,
) -> dict[str, Any]:  # fmt: skip
    """Every phase, in one process and on one model; each bounded by ``requests`` and ``seconds``."""
    pictures = harness.make_images(images, HEIGHT, width=WIDTH)
    report: dict[str, Any] = {"config": {"batch_size": batch_size, "concurrency": concurrency, "images": images,
                                         "high_concurrency": high_concurrency, "overload_factor": overload_factor,
                                         "overload_queue": overload_queue,
                                         "overload_concurrency": overload_concurrency}}  # fmt: skip
    levels = (1, concurrency, high_concurrency)
    batches = {"CASTREAM_MAX_BATCH_SIZE": str(batch_size)}
    with harness.request_bodies(pictures) as bodies:
        log.info("in-process work at batch 1 and %d", batch_size)
        before = work_in_process(model, pictures, batch_size, requests, seconds / 2)
        with harness.service_process(model, **batches) as server:
            harness.wrk_phase(server.port, bodies, high_concurrency, high_concurrency * 8, min(3.0, seconds))  # warm-up
            for c in levels:
                log.info("service at concurrency %d", c)
                report[f"service_c{c}"] = asdict(harness.wrk_phase(server.port, bodies, c, requests, seconds))
        after = work_in_process(model, pictures, batch_size, requests, seconds / 2)
        work = report["work"] = {key: (before[key] + after[key]) / 2 for key in before}
        capacity = report["capacity"] = max(report[f"service_c{c}"]["throughput"] for c in levels[1:])
        rate, short = overload_factor * capacity, {"CASTREAM_MAX_QUEUE": str(overload_queue)}
        with harness.service_process(model, **batches, **short, CASTREAM_MAX_IMAGES_PER_REQUEST="1") as server:
            # Warm-up at the overload itself, so that the phase measures the steady state (buffers, arenas).
            harness.wrk_phase(server.port, bodies, overload_concurrency, requests, min(3.0, seconds), rate)
            log.info("overload: %.0f requests/s on %d connections", rate, overload_concurrency)
            with harness.sampled_rss(server.process.pid, 0.2) as rss:
                burst = harness.wrk_phase(server.port, bodies, overload_concurrency, requests, seconds, rate)
            recovery = harness.wrk_phase(server.port, bodies, 1, 20, min(5.0, seconds))
            ready = harness.get(server.port, "/readyz")[0]
    report["overhead_c1_p50_ms"] = report["service_c1"]["p50_ms"] - work["request_p50_ms"]
    report["overhead_c1_p99_ms"] = report["service_c1"]["p99_ms"] - work["request_p99_ms"]
    for c in levels[1:]:
        report[f"ratio_c{c}_serial_decode"] = report[f"service_c{c}"]["throughput"] / work["serial_decode"]
        report[f"ratio_c{c}_run_only"] = report[f"service_c{c}"]["throughput"] / work["run_only"]
    report["ratio_high_low"] = (
        report[f"service_c{high_concurrency}"]["throughput"] / report[f"service_c{concurrency}"]["throughput"]
    )
    memory = {"start_mib": rss[0], "peak_mib": max(rss), "end_mib": rss[-1], "growth": rss[-1] / rss[0] - 1,
              "second_half_growth": rss[-1] / rss[len(rss) // 2] - 1}  # fmt: skip
    report["overload"] = asdict(burst) | {
        "offered_per_second": rate, "sent_per_second": burst.requests / burst.seconds,
        "goodput_ratio": burst.throughput / capacity, "memory": memory,
        "rejected_share": burst.statuses.get("503", 0) / burst.requests if burst.requests else math.nan,
    }  # fmt: skip
    report["recovery"] = {"statuses": recovery.statuses, "p50_ms": recovery.p50_ms, "readyz": ready}
    report["recovered"] = recovery.statuses == {"200": recovery.requests} and ready == 200
    return report


def _aims(r: dict[str, Any] | None) -> list[Aim]:
    c, high = dig(r, "config", "concurrency") or 8, dig(r, "config", "high_concurrency") or 32
    growth = dig(r, "overload", "memory", "growth")
    return [
        *(Aim(f"service {p} at concurrency 1 over the in-process work's {p}", dig(r, f"overhead_c1_{p}_ms"), goal,
              False, " ms") for p, goal in (("p50", 2), ("p99", 5))),
        Aim(f"throughput at concurrency {c} / in-process batch, serial decoding", dig(r, f"ratio_c{c}_serial_decode"),
            1.0, True),
        Aim(f"throughput at concurrency {high} / in-process batch, serial decoding",
            dig(r, f"ratio_c{high}_serial_decode"), 1.0, True),
        Aim(f"throughput at concurrency {high} / at {c}", dig(r, "ratio_high_low"), 1.0, True),
        Aim("overload at twice capacity: goodput / capacity", dig(r, "overload", "goodput_ratio"), 0.9, True),
        Aim("overload: p99 of the 503 answers", dig(r, "overload", "rejected_p99_ms"), 50, False, " ms"),
        Aim("overload: the service's memory growth over the phase", None if growth is None else growth * 100, 5, False,
            " %"),
    ]  # fmt: skip


def _render(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    config, work, burst, memory = r["config"], r["work"], r["overload"], r["overload"]["memory"]
    c, high, b = config["concurrency"], config["high_concurrency"], config["batch_size"]
    rows = [
        ["in process: one request's work (JSON, base64, decode, preprocess, run at batch 1)",
         fmt(1000 / work["request_p50_ms"]), fmt(work["request_p50_ms"], 2), fmt(work["request_p99_ms"], 2)],
        [f"in process: `run` at batch {b}", fmt(work["run_only"]), "", ""],
        [f"in process: batch {b}, its images decoded serially first", fmt(work["serial_decode"]), "", ""],
        *([f"service, concurrency {n}", fmt(r[f"service_c{n}"]["throughput"]), fmt(r[f"service_c{n}"]["p50_ms"], 2),
           fmt(r[f"service_c{n}"]["p99_ms"], 2)] for n in (1, c, high)),
        [f"service, overload: {burst['offered_per_second']:.0f} requests/s offered (answered ones)",
         fmt(burst["throughput"]), fmt(burst["p50_ms"], 2), fmt(burst["p99_ms"], 2)],
    ]  # fmt: skip
    recovery = r["recovery"]
    return [
        f"The same {config['images']} JPEGs ({WIDTH}x{HEIGHT}), each request one image as JSON base64 to `POST "
        "/classify?top_k=1`, from `wrk` with `benchmarks/load.lua` (one connection per thread) on loopback. The "
        "in-process work is the service's code without the service (same model options and threads), measured "
        "before and after the service phases and averaged.",
        "",
        *table(["", "images/s", "p50 ms", "p99 ms"], rows),
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
        f"{counts(burst['statuses'])}; goodput {burst['throughput']:.1f} requests/s = **{burst['goodput_ratio']:.2f}**"
        f" of capacity; {pct(burst['rejected_share'])} answered 503 (p50 {fmt(burst['rejected_p50_ms'], 2)} ms, p99 "
        f"**{fmt(burst['rejected_p99_ms'], 2)} ms**, `Retry-After: {burst['retry_after']}`); the service's memory "
        f"{memory['start_mib']:.0f} MiB before, {memory['peak_mib']:.0f} at most, {memory['end_mib']:.0f} after "
        f"({memory['growth'] * 100:+.1f} % over the phase, {memory['second_half_growth'] * 100:+.1f} % over its "
        f"second half, after a warm-up at the same rate). Afterwards {counts(recovery['statuses'])} at p50 "
        f"{fmt(recovery['p50_ms'], 2)} ms and `/readyz` {recovery['readyz']}: "
        f"{'recovered' if r['recovered'] else '**did not recover**'}.",
        "",
    ]


SECTIONS = (
    Section("load", "The service from outside, against its own work in process", run,
            {"requests": 24, "seconds": 2.0}, _render, _aims),
)  # fmt: skip
