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
import json
import logging
import os
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import LoadConfig, closed_loop, get_status, make_images, percentile_ms, service
from benchmarks.sections import Aim, Context, Section, dig, fmt, table
from service.imaging import decode
from service.model import load_model
from service.preprocess import Preprocessor
from training.logs import setup_logging

log = logging.getLogger("benchmarks.load")


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
    result["batch1_p50_ms"], result["batch1_p99_ms"] = percentile_ms(latencies, 50), percentile_ms(latencies, 99)
    return result


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
        ready = asyncio.run(get_status(port, "/readyz"))
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


def _command(context: Context) -> str:
    b = context.budget
    return f"python -m benchmarks.load --model {context.model} --requests {b['requests']} --seconds {b['seconds']:g}"


def _run(context: Context) -> dict[str, Any]:
    return run(LoadConfig(model=context.model, requests=context.budget["requests"], seconds=context.budget["seconds"]))


def _aims(result: dict[str, Any] | None) -> list[Aim]:
    concurrency = dig(result, "config", "concurrency") or 8
    return [
        Aim(
            f"service / raw ONNX Runtime throughput, concurrency {concurrency}",
            dig(result, "ratio_run_only"),
            0.85,
            True,
        ),
        Aim(
            "service p50 at concurrency 1 minus the model's own batch-1 p50",
            dig(result, "overhead_c1_p50_ms"),
            15,
            False,
            " ms",
        ),
    ]


def _render(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    raw, c = r["raw"], r["config"]["concurrency"]
    lines = [
        f"Same model, same {r['config']['images']} JPEGs, batch size {r['config']['batch_size']}; the service gets one "
        "image per request from closed-loop clients on loopback. Raw ONNX Runtime is measured before and after the "
        "service phases and averaged.",
        "",
    ]
    rows = [
        ["raw `session.run`, batch 1", "n/a", fmt(raw["batch1_p50_ms"]), fmt(raw["batch1_p99_ms"])],
        [f"raw `session.run`, batch {r['config']['batch_size']}", fmt(raw["run_only"]), "", ""],
        ["raw decode + preprocess + run", fmt(raw["with_preprocessing"]), "", ""],
    ]
    for concurrency in (1, c):
        phase = r[f"service_c{concurrency}"]
        rows.append(
            [
                f"service, concurrency {concurrency}",
                fmt(phase["throughput"]),
                fmt(phase["p50_ms"]),
                fmt(phase["p99_ms"]),
            ]
        )
    lines += table(["", "images/s", "p50 ms", "p99 ms"], rows)
    burst, recovery = r["overload"], r["recovery"]
    lines += [
        "",
        f"- Throughput ratio service / raw at concurrency {c}: **{r['ratio_run_only']:.2f}** against `session.run` "
        f"alone, {r['ratio_with_preprocessing']:.2f} against decode + preprocess + run.",
        f"- Latency at concurrency 1: service p50 is **{r['overhead_c1_p50_ms']:+.1f} ms** over the model's own "
        "batch-1 p50 (HTTP, decoding, the batching delay and the response).",
        f"- Overload ({r['config']['overload_concurrency']} clients, queue of {r['config']['overload_queue']} images): "
        f"answers {burst['statuses']}; 503 in p50 {fmt(burst['rejected_p50_ms'])} ms / p99 "
        f"{fmt(burst['rejected_p99_ms'])} ms with `Retry-After: {burst['retry_after']}`. Afterwards "
        f"{recovery['statuses']} at p50 {fmt(recovery['p50_ms'])} ms and `/readyz` {recovery['readyz']}: "
        f"{'recovered' if r['recovered'] else '**did not recover**'}.",
        "",
    ]
    return lines


SECTIONS = (
    Section(
        "load",
        "Service against raw ONNX Runtime",
        full={"requests": 800, "seconds": 20.0},
        quick={"requests": 24, "seconds": 5.0},
        command=_command,
        run=_run,
        render=_render,
        aims=_aims,
    ),
)


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
    setup_logging()
    options = {k: v for k, v in vars(args).items() if k != "json"}
    report = run(LoadConfig(**options))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    sys.stdout.write(format_report(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
