"""What the service's own metrics say, scraped before and after a ``wrk`` phase: where the time of one request
goes and how batches went under load (``stages``), what the overlay PNG's zlib level costs (``overlay_png``), and
when a batching delay pays (``batch_delay``)."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from benchmarks import harness
from benchmarks.sections import Section, fmt, result_of, table

log = logging.getLogger(__name__)

MODES = ("none", "grid", "overlay")
REQUEST = "castream_request_duration_seconds"
STAGES = {  # stage name -> histogram; each is observed once per image or batch, one image per request here
    "decode": "castream_decode_duration_seconds",
    "preprocess": "castream_preprocess_duration_seconds",
    "queue wait": "castream_queue_wait_seconds",
    "inference": "castream_inference_duration_seconds",
    "encode": "castream_encode_duration_seconds",
}
Totals = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def histogram_totals(text: str) -> Totals:
    """``{(sample name, sorted labels): value}`` for every ``_sum`` and ``_count`` in a Prometheus exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.endswith(("_sum", "_count"))
    }


def change(before: Totals, after: Totals) -> Totals:
    """What each total grew by between two scrapes."""
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def stage_means(delta: Totals, mode: str) -> dict[str, float]:
    """Mean milliseconds per ``/classify`` request of each stage over a scrape-to-scrape ``change``, and ``rest``.

    Raises:
        ValueError: no request was answered between the scrapes.
    """
    route = (("route", "/classify"),)
    if (requests := delta.get((f"{REQUEST}_count", route), 0.0)) <= 0:
        raise ValueError(f"no /classify request was answered between the two scrapes (count delta {requests})")
    means = {stage: delta.get((f"{histogram}_sum", (("attention", mode),) if stage == "encode" else ()), 0.0)
             / requests * 1000 for stage, histogram in STAGES.items()}  # fmt: skip
    request = delta[(f"{REQUEST}_sum", route)] / requests * 1000
    return means | {"rest": request - sum(means.values()), "request": request}


def batch_profile(delta: Totals, seconds: float) -> dict[str, float]:
    """How the batches went over a scrape-to-scrape ``change`` of ``seconds``: their mean size, the time of one
    ``session.run`` and the share of the time one was running.

    Raises:
        ValueError: no batch ran between the scrapes.
    """
    if (runs := delta.get(("castream_inference_duration_seconds_count", ()), 0.0)) <= 0:
        raise ValueError(f"no batch ran between the two scrapes (count delta {runs})")
    busy = delta[("castream_inference_duration_seconds_sum", ())]
    images = delta[("castream_batch_size_images_sum", ())]
    return {"batches": runs, "mean_batch": images / runs, "run_ms": busy / runs * 1000, "busy": busy / seconds}


def scrape(port: int) -> Totals:
    return histogram_totals(harness.get(port, "/metrics")[1].decode())


def watched(server: harness.Running, bodies: list[Path], *args: Any, **kwargs: Any) -> tuple[harness.Phase, Totals]:
    """A ``harness.wrk_phase`` on the server, and what the service's totals grew by during it."""
    before = scrape(server.port)
    phase = harness.wrk_phase(server.port, bodies, *args, **kwargs)
    return phase, change(before, scrape(server.port))


def request_stages(model: Path, requests: int = 150, seconds: float = 20.0, concurrency: int = 8) -> dict[str, Any]:
    """Per ``attention`` mode at concurrency 1: client p50/p99 and the mean time of each stage (ms); then
    ``attention=grid`` at ``concurrency``: throughput, stages per image and how the batches went."""
    single: dict[str, Any] = {}
    with harness.request_bodies(harness.model_images(model, 32)) as bodies, harness.service_process(model) as server:
        harness.wrk_phase(server.port, bodies, 1, 10, seconds)  # the first requests pay one-off costs
        for mode in MODES:
            log.info("stages: %d requests with attention=%s", requests, mode)
            phase, delta = watched(server, bodies, 1, requests, seconds, target=f"/classify?attention={mode}")
            single[mode] = {"requests": phase.requests, "statuses": phase.statuses, "client_p50_ms": phase.p50_ms,
                            "client_p99_ms": phase.p99_ms, "stages_ms": stage_means(delta, mode)}  # fmt: skip
        log.info("stages: %d requests from %d clients", requests * 2, concurrency)
        phase, delta = watched(server, bodies, concurrency, requests * 2, seconds, target="/classify?attention=grid")
    loaded = {"concurrency": concurrency, "requests": phase.requests, "statuses": phase.statuses,
              "images_per_second": phase.throughput, "client_p50_ms": phase.p50_ms,
              "stages_ms": stage_means(delta, "grid"), **batch_profile(delta, phase.seconds)}  # fmt: skip
    return {"single": single, "loaded": loaded}


def overlay_png_levels(
    model: Path, requests: int = 150, seconds: float = 20.0, rounds: int = 2, concurrency: int = 8,
    before_level: int = 6, after_level: int = 1,
) -> dict[str, Any]:  # fmt: skip
    """``attention=overlay`` at concurrency 1 and ``concurrency`` on services that differ only in their PNG level
    (``before_level``, Pillow's default, and ``after_level``), in ABBA order over ``rounds`` rounds, averaged."""
    target = "/classify?attention=overlay"

    def measure(server: harness.Running, level: int) -> dict[str, float]:
        harness.wrk_phase(server.port, bodies, 1, 10, seconds, target=target)
        log.info("overlay PNG level %d", level)
        single, delta = watched(server, bodies, 1, requests, seconds, target=target)
        loaded = harness.wrk_phase(server.port, bodies, concurrency, requests * 2, seconds, target=target)
        status, body = harness.get(server.port, target, harness.json_body(images[0]))
        if status != 200:
            raise RuntimeError(f"POST {target} answered {status}: {body[:200]!r}")
        png, stages = json.loads(body)["predictions"][0]["attention"]["overlay_png"], stage_means(delta, "overlay")
        return {"encode_ms": stages["encode"], "request_ms": stages["request"],
                "c1_p50_ms": single.p50_ms, "c1_p99_ms": single.p99_ms,
                f"c{concurrency}_images_per_second": loaded.throughput, f"c{concurrency}_p50_ms": loaded.p50_ms,
                "png_bytes": len(base64.b64decode(png))}  # fmt: skip

    images = harness.model_images(model, 32)
    with harness.request_bodies(images) as bodies:
        levels = harness.fresh_services(
            model, "CASTREAM_OVERLAY_PNG_LEVEL", (before_level, after_level), rounds, measure
        )
    before, after = ({"png_level": level} | levels[level] for level in (before_level, after_level))
    return {"concurrency": concurrency, "rounds": rounds, "before": before, "after": after}


BATCH_SUMS = ("castream_batch_size_images_sum", ()), ("castream_batch_size_images_count", ())


def batch_delays(
    model: Path, delays: Sequence[float] = (0.0, 2.0, 5.0), seconds: float = 6.0, rounds: int = 1,
    concurrencies: Sequence[int] = (1, 8, 32),
) -> dict[str, Any]:  # fmt: skip
    """The service at each concurrency under each ``CASTREAM_MAX_BATCH_DELAY_MS``, a fresh service per delay, in
    alternating order over ``rounds`` rounds (averaged): throughput, p50, p99 and the mean batch."""

    def measure(server: harness.Running, delay: float) -> dict[str, dict[str, float]]:
        harness.wrk_phase(server.port, bodies, 8, 10**6, 2)  # warm-up
        rows = {}
        for c in concurrencies:
            phase, delta = watched(server, bodies, c, 10**6, seconds)
            images, batches = (delta.get(key, 0.0) for key in BATCH_SUMS)
            rows[str(c)] = {"throughput": phase.throughput, "p50_ms": phase.p50_ms, "p99_ms": phase.p99_ms,
                            "mean_batch": images / batches if batches else float("nan")}  # fmt: skip
        return rows

    with harness.request_bodies(harness.make_images(16, 300, width=451)) as bodies:
        by_delay = harness.fresh_services(model, "CASTREAM_MAX_BATCH_DELAY_MS", delays, rounds, measure)
    return {"seconds": seconds, "rounds": rounds, "delays_ms": {f"{d:g}": rows for d, rows in by_delay.items()}}


STAGE_NOTES = {
    "decode": "bytes to RGB pixels (`castream_decode_duration_seconds`)",
    "preprocess": "resize, crop, normalise (`castream_preprocess_duration_seconds`)",
    "queue wait": "until its batch runs, incl. the batching delay (`castream_queue_wait_seconds`)",
    "inference": "`session.run` of its one-image batch (`castream_inference_duration_seconds`)",
    "encode": "labels, grid, PNG, JSON (`castream_encode_duration_seconds`)",
    "rest": "body reading and parsing, thread hand-offs, framework (request minus the above)",
    "request": "`castream_request_duration_seconds`",
}


def _cell(stages: dict[str, float], stage: str) -> str:
    """A stage's milliseconds, with its share of the request's."""
    share = f" ({stages[stage] / stages['request'] * 100:.0f} %)" if stage != "request" and stages["request"] else ""
    return fmt(stages[stage], 2) + share


def _render_stages(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    single, loaded = r["single"], r["loaded"]
    rows = [[f"{stage}: {note}", *(_cell(single[m]["stages_ms"], stage) for m in single)]
            for stage, note in STAGE_NOTES.items()]  # fmt: skip
    client = [f"{fmt(single[m]['client_p50_ms'])} / {fmt(single[m]['client_p99_ms'])}" for m in single]
    rows.append(["client p50 / p99 (adds HTTP on loopback)", *client])
    stages, raw = loaded["stages_ms"], {p["batch_size"]: p for p in result_of(results, "batch") or []}
    size = round(loaded["mean_batch"])
    alone = f" (alone, a batch of {size} takes {raw[size]['p50_ms']:.1f} ms: see below)" if size in raw else ""
    return [
        "One `wrk` connection, one image per request as JSON base64 (so every batch holds one image), mean "
        "milliseconds per request from the service's own histograms (`_sum` / `_count` before and after each "
        "phase), by `attention` option.",
        "",
        *table(["stage (ms per request)", *(f"`attention={m}`" for m in single)], rows),
        "",
        f"Under load, {loaded['concurrency']} clients with `attention=grid`: {fmt(loaded['images_per_second'])} "
        f"images/s, batches of {loaded['mean_batch']:.1f} images on average; one `session.run` took "
        f"{loaded['run_ms']:.1f} ms{alone} and one was running {loaded['busy'] * 100:.0f} % of the time. Our own work "
        f"per image: {', '.join(f'{s} {stages[s]:.2f} ms' for s in ('decode', 'preprocess', 'encode'))}, besides HTTP "
        f"and parsing; queue wait {stages['queue wait']:.2f} ms. On {results['machine']['usable_cores']} cores this "
        "work competes with ONNX Runtime's threads for the CPU, and between batches the next one is still being read "
        "and decoded.",
        "",
    ]


OURS = ("decode", "preprocess", "encode", "rest")  # stages that are our code, not ONNX Runtime or a set delay


def _render_overlay(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    before, after, c = r["before"], r["after"], r["concurrency"]
    lines = []
    if (overlay := result_of(results, "stages", "single", "overlay", "stages_ms")) is not None:
        costs = {stage: overlay[stage] for stage in OURS} | {"encode": before["encode_ms"]}
        slowest = max(costs, key=costs.__getitem__)
        others = ", ".join(f"{stage} {costs[stage]:.1f} ms" for stage in OURS if stage != slowest)
        lines += [
            f"With the old PNG level, the largest stage of our own code in an `attention=overlay` request was "
            f"**{slowest}** ({costs[slowest]:.1f} ms; {others}). Inference belongs to ONNX Runtime, and the queue wait "
            "at concurrency 1 is the batching delay (`CASTREAM_MAX_BATCH_DELAY_MS`), a setting rather than work.",
            "",
        ]
    keys = [("encode ms per request (server)", "encode_ms", 2), ("request ms (server)", "request_ms", 1),
            ("client p50 ms, concurrency 1", "c1_p50_ms", 1), ("client p99 ms, concurrency 1", "c1_p99_ms", 1),
            (f"images/s, concurrency {c}", f"c{c}_images_per_second", 1),
            (f"client p50 ms, concurrency {c}", f"c{c}_p50_ms", 1), ("PNG bytes", "png_bytes", 0)]  # fmt: skip
    rows = [[label, fmt(before[key], digits), fmt(after[key], digits), fmt(after[key] / before[key], 2) + "x"]
            for label, key, digits in keys if before.get(key)]  # fmt: skip
    header = ["", f"before (level {before['png_level']})", f"after (level {after['png_level']})", "after / before"]
    return [
        *lines,
        f"The overlay PNG was written at zlib level {before['png_level']} (Pillow's default); the service now writes "
        f"level {after['png_level']} (`CASTREAM_OVERLAY_PNG_LEVEL`): the same pixels, a somewhat larger file. Both "
        f"settings ran in this run with `attention=overlay`, in ABBA order ({r['rounds']} round(s), averaged).",
        "",
        *table(header, rows),
        "",
    ]


def _render_delays(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
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
    Section("stages", "Where the time goes in one request", request_stages, {"requests": 12, "seconds": 5.0},
            _render_stages),
    Section("overlay_png", "Made faster: the overlay PNG, before and after", overlay_png_levels,
            {"requests": 12, "seconds": 5.0, "rounds": 1}, _render_overlay),
    Section("batch_delay", "When a batching delay pays", batch_delays,
            {"delays": (0.0, 30.0), "seconds": 1.0, "rounds": 1}, _render_delays),
)  # fmt: skip
