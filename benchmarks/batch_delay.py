"""When does a batching delay pay? The service at concurrency 1, 8 and 32 under each ``CASTREAM_MAX_BATCH_DELAY_MS``.

For each delay the service is started afresh and driven by ``wrk`` as in ``benchmarks.load`` (one JSON base64
image per ``POST /classify?top_k=1``); the report gives throughput, p50 and p99, and the mean batch size from
the service's own histogram, so that a delay's effect on batches and on latency can be read side by side.
The delays run in alternating order over ``rounds`` rounds (ABC, CBA, ...) and the rounds are averaged.

    python -m benchmarks batch_delay --model models/castream.onnx --delays 0 2 5 --seconds 8
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import LoadConfig, make_images, round_order, service_process
from benchmarks.load import body_files, wrk_phase
from benchmarks.sections import Section, fmt, table
from benchmarks.stages import scrape

CONCURRENCIES = (1, 8, 32)
BATCHES = ("castream_batch_size_images_sum", ()), ("castream_batch_size_images_count", ())


def sweep(model: Path, delays: list[float], seconds: float, rounds: int = 2) -> dict[str, Any]:
    images = make_images(16, 300, width=451)
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        bodies = body_files(Path(folder), images)
        for round_index in range(rounds):
            for delay in round_order(delays, round_index):
                with service_process(LoadConfig(model=model, max_batch_delay_ms=delay)) as server:
                    wrk_phase(server.port, bodies, 8, 10**6, 2)  # warm-up
                    for concurrency in CONCURRENCIES:
                        before = scrape(server.port)  # one scrape each side, so that its sum and count agree
                        phase = wrk_phase(server.port, bodies, concurrency, 10**6, seconds)
                        after = scrape(server.port)
                        images_run, ran = (after[key] - before.get(key, 0.0) for key in BATCHES)
                        row = {"throughput": phase.throughput, "p50_ms": phase.p50_ms, "p99_ms": phase.p99_ms,
                               "mean_batch": images_run / ran if ran else float("nan")}  # fmt: skip
                        results.setdefault(f"{delay:g}", {}).setdefault(str(concurrency), []).append(row)
    averaged = {
        delay: {c: {k: float(np.mean([row[k] for row in rows])) for k in rows[0]} for c, rows in by_c.items()}
        for delay, by_c in results.items()
    }
    return {"seconds": seconds, "rounds": rounds, "delays_ms": averaged}


def _render(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    rows = [[delay, c, fmt(row["throughput"]), fmt(row["p50_ms"], 2), fmt(row["p99_ms"], 2), fmt(row["mean_batch"], 2)]
            for delay, by_c in r["delays_ms"].items() for c, row in by_c.items()]  # fmt: skip
    return [
        f"A fresh service per delay, `wrk` as in the load section, {r['seconds']:g} s per phase, {r['rounds']} "
        "round(s) in alternating order, averaged; the mean batch from `castream_batch_size_images`. A delay adds at "
        "least itself to a lone request; it pays only where a batch's run has a large fixed cost.",
        "",
        *table(["delay ms", "concurrency", "requests/s", "p50 ms", "p99 ms", "mean batch"], rows),
        "",
    ]


SECTIONS = (
    Section(
        "batch_delay",
        "When a batching delay pays",
        full={"delays": (0.0, 2.0, 5.0), "seconds": 6.0, "rounds": 1},
        quick={"delays": (0.0, 30.0), "seconds": 1.0, "rounds": 1},
        run=lambda context: sweep(
            context.model, list(context.budget["delays"]), context.budget["seconds"], context.budget["rounds"]
        ),  # fmt: skip
        render=_render,
    ),
)
