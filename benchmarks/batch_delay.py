"""When does a batching delay pay? The service at concurrency 1, 8 and 32 under each ``CASTREAM_MAX_BATCH_DELAY_MS``.

For each delay the service is started afresh and driven by ``wrk`` as in ``benchmarks.load`` (one JSON base64
image per ``POST /classify?top_k=1``); the report gives throughput, p50 and p99, and the mean batch size from
the service's own histogram, so that a delay's effect on batches and on latency can be read side by side.
The delays run in alternating order over ``rounds`` rounds (ABC, CBA, ...) and the rounds are averaged.

    python -m benchmarks.batch_delay --model models/castream.onnx --delays 0,2,5 --seconds 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import HOST, LoadConfig, json_body, make_images, round_order, service_process
from benchmarks.load import wrk_phase

CONCURRENCIES = (1, 8, 32)


async def _metrics(port: int) -> str:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(f"GET /metrics HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return data.decode()


def batches(port: int) -> tuple[float, float]:
    """``(images, batches)`` run so far, from ``castream_batch_size_images``."""
    text = asyncio.run(_metrics(port))
    total = float(re.search(r"^castream_batch_size_images_sum ([0-9.e+]+)$", text, re.M).group(1))
    count = float(re.search(r"^castream_batch_size_images_count ([0-9.e+]+)$", text, re.M).group(1))
    return total, count


def sweep(model: Path, delays: list[float], seconds: float, rounds: int = 2) -> dict[str, Any]:
    images = make_images(16, 300, width=451)
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        bodies = [Path(folder) / f"body{i}.json" for i in range(len(images))]
        for path, image in zip(bodies, images, strict=True):
            path.write_bytes(json_body(image))
        for round_index in range(rounds):
            for delay in round_order(delays, round_index):
                config = LoadConfig(model=model, max_batch_delay_ms=delay)
                with service_process(config) as (port, _):
                    wrk_phase(port, bodies, 8, 10**6, 2)  # warm-up
                    for concurrency in CONCURRENCIES:
                        before = batches(port)
                        phase = wrk_phase(port, bodies, concurrency, 10**6, seconds)
                        after = batches(port)
                        ran = after[1] - before[1]
                        row = {
                            "throughput": phase.throughput,
                            "p50_ms": phase.p50_ms,
                            "p99_ms": phase.p99_ms,
                            "mean_batch": (after[0] - before[0]) / ran if ran else float("nan"),
                        }
                        results.setdefault(f"{delay:g}", {}).setdefault(str(concurrency), []).append(row)
    averaged = {
        delay: {c: {k: float(np.mean([row[k] for row in rows])) for k in rows[0]} for c, rows in by_c.items()}
        for delay, by_c in results.items()
    }
    return {"seconds": seconds, "rounds": rounds, "delays_ms": averaged}


def format_report(result: dict[str, Any]) -> str:
    lines = ["delay ms | concurrency | requests/s | p50 ms | p99 ms | mean batch", "---|---|---|---|---|---"]
    for delay, by_c in result["delays_ms"].items():
        for c, row in by_c.items():
            lines.append(
                f"{delay} | {c} | {row['throughput']:.1f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
                f"{row['mean_batch']:.2f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch_delay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/castream.onnx"))
    parser.add_argument("--delays", default="0,2,5", help="comma list of CASTREAM_MAX_BATCH_DELAY_MS values")
    parser.add_argument("--seconds", type=float, default=8.0, help="per phase")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = sweep(args.model, [float(d) for d in args.delays.split(",")], args.seconds, args.rounds)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    sys.stdout.write(format_report(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
