"""Where the time of one request goes, read from the service's own metrics; and the overlay PNG's cost.

The service is started on a loopback port (``benchmarks.harness.service_process``) and one client sends requests one
at a time, so every batch holds one image and no request waits behind another. ``GET /metrics`` before and
after a phase gives each stage's mean time per request: decode, preprocess, queue wait, inference, response
encoding (labels, attention grid, PNG overlay, JSON). What the stages leave of the request's own duration
(``castream_request_duration_seconds``) is the rest: reading and parsing the body, thread hand-offs, the
framework. The client's latency adds HTTP on loopback on top. A last phase at the configured concurrency
shows the same stages per image under load, and how full the batches were and how busy ``session.run``.

``overlay_png_levels`` runs the same requests with ``attention=overlay`` on services that differ only in
``CASTREAM_OVERLAY_PNG_LEVEL``, in ABBA order, to show what the PNG's zlib level costs.

python -m benchmarks stages --model models/castream.onnx [--requests 100] [--seconds 20]
python -m benchmarks overlay_png --model models/castream.onnx [--rounds 2]
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.harness import (
    HOST,
    LoadConfig,
    closed_loop,
    exchange,
    make_images,
    multipart_request,
    round_order,
    service_process,
)
from benchmarks.sections import Context, Section, fmt, result_of, table
from service.model import load_model

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
    totals: Totals = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count")):
                totals[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return totals


def stage_means(before: Totals, after: Totals, mode: str) -> dict[str, float]:
    """Mean milliseconds per ``/classify`` request of each stage between two scrapes, and ``rest``.

    Raises:
        ValueError: no request was answered between the scrapes.
    """

    def delta(name: str, labels: tuple[tuple[str, str], ...] = ()) -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    route = (("route", "/classify"),)
    requests = delta(f"{REQUEST}_count", route)
    if requests <= 0:
        raise ValueError(f"no /classify request was answered between the two scrapes (count delta {requests})")
    means = {}
    for stage, histogram in STAGES.items():
        labels = (("attention", mode),) if stage == "encode" else ()
        means[stage] = delta(f"{histogram}_sum", labels) / requests * 1000
    means["rest"] = delta(f"{REQUEST}_sum", route) / requests * 1000 - sum(means.values())
    means["request"] = delta(f"{REQUEST}_sum", route) / requests * 1000
    return means


def scrape(port: int) -> Totals:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as response:
        return histogram_totals(response.read().decode())


def classify_body(port: int, image: bytes, query: str) -> dict[str, Any]:
    """One ``POST /classify`` answered 200, as JSON (to look at what the client receives)."""

    async def once() -> tuple[int, dict, bytes]:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            return await exchange(reader, writer, multipart_request(port, image, query))
        finally:
            writer.close()

    status, _, body = asyncio.run(once())
    if status != 200:
        raise RuntimeError(f"POST /classify?{query} answered {status}: {body[:200]!r}")
    return json.loads(body)


def batch_profile(before: Totals, after: Totals, seconds: float) -> dict[str, float]:
    """How the batches went between two scrapes ``seconds`` apart: their mean size, the time of one
    ``session.run`` and the share of the time one was running.

    Raises:
        ValueError: no batch ran between the scrapes.
    """
    runs = after.get(("castream_inference_duration_seconds_count", ()), 0.0) - before.get(
        ("castream_inference_duration_seconds_count", ()), 0.0
    )
    if runs <= 0:
        raise ValueError(f"no batch ran between the two scrapes (count delta {runs})")
    busy = (
        after[("castream_inference_duration_seconds_sum", ())] - before[("castream_inference_duration_seconds_sum", ())]
    )
    images = after[("castream_batch_size_images_sum", ())] - before[("castream_batch_size_images_sum", ())]
    return {"batches": runs, "mean_batch": images / runs, "run_ms": busy / runs * 1000, "busy": busy / seconds}


def request_stages(
    config: LoadConfig, modes: tuple[str, ...] = MODES, requests: int = 100, seconds: float = 20.0
) -> dict[str, Any]:
    """Per ``attention`` mode at concurrency 1: client p50/p99 and the mean time of each stage (ms); then
    ``attention=grid`` at ``config.concurrency``: throughput, stages per image and how the batches went."""
    info = load_model(config.model, ["cpu"]).info
    images = make_images(config.images, info.preprocessing.resize)
    single: dict[str, Any] = {}
    with service_process(config) as server:
        port = server.port
        asyncio.run(closed_loop(port, images, 1, 10, seconds))  # first requests pay one-off costs
        for mode in modes:
            log.info("stages: %d requests with attention=%s", requests, mode)
            before = scrape(port)
            phase = asyncio.run(closed_loop(port, images, 1, requests, seconds, f"attention={mode}"))
            single[mode] = {
                "requests": phase.requests,
                "statuses": phase.statuses,
                "client_p50_ms": phase.p50_ms,
                "client_p99_ms": phase.p99_ms,
                "stages_ms": stage_means(before, scrape(port), mode),
            }
        log.info("stages: %d requests from %d clients", requests * 2, config.concurrency)
        before = scrape(port)
        phase = asyncio.run(closed_loop(port, images, config.concurrency, requests * 2, seconds, "attention=grid"))
        after = scrape(port)
    loaded = {
        "concurrency": config.concurrency,
        "requests": phase.requests,
        "statuses": phase.statuses,
        "images_per_second": phase.throughput,
        "client_p50_ms": phase.p50_ms,
        "stages_ms": stage_means(before, after, "grid"),
        **batch_profile(before, after, phase.seconds),
    }
    return {"single": single, "loaded": loaded}


def overlay_png_levels(
    config: LoadConfig, levels: dict[str, int], requests: int = 100, seconds: float = 20.0, rounds: int = 2
) -> dict[str, Any]:
    """``attention=overlay`` at concurrency 1 and ``config.concurrency`` for each named PNG level.

    Services alternate in ABBA order over ``rounds`` rounds; figures are averaged over a level's runs.
    """
    info = load_model(config.model, ["cpu"]).info
    images = make_images(config.images, info.preprocessing.resize)
    names = list(levels)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in round_order(names, round_):
            env = {"CASTREAM_OVERLAY_PNG_LEVEL": str(levels[name])}
            with service_process(config, **env) as server:
                port = server.port
                asyncio.run(closed_loop(port, images, 1, 10, seconds, "attention=overlay"))
                log.info("overlay PNG level %d (%s), round %d", levels[name], name, round_ + 1)
                before = scrape(port)
                single = asyncio.run(closed_loop(port, images, 1, requests, seconds, "attention=overlay"))
                stages = stage_means(before, scrape(port), "overlay")
                loaded = asyncio.run(
                    closed_loop(port, images, config.concurrency, requests * 2, seconds, "attention=overlay")
                )
                overlay = classify_body(port, images[0], "attention=overlay")["predictions"][0]["attention"]
            runs[name].append(
                {
                    "encode_ms": stages["encode"],
                    "request_ms": stages["request"],
                    "c1_p50_ms": single.p50_ms,
                    "c1_p99_ms": single.p99_ms,
                    f"c{config.concurrency}_images_per_second": loaded.throughput,
                    f"c{config.concurrency}_p50_ms": loaded.p50_ms,
                    "png_bytes": len(base64.b64decode(overlay["overlay_png"])) if overlay else 0,
                }
            )
    result: dict[str, Any] = {"concurrency": config.concurrency, "rounds": rounds}
    for name in names:
        figures = runs[name]
        result[name] = {"png_level": levels[name]} | {
            key: sum(run[key] for run in figures) / len(figures) for key in figures[0]
        }
    return result


def _config(context: Context) -> LoadConfig:
    return LoadConfig(model=context.model, seconds=context.budget["seconds"])


def _run_stages(context: Context) -> dict[str, Any]:
    b = context.budget
    return request_stages(_config(context), MODES, b["requests"], b["seconds"])


def _run_overlay(context: Context) -> dict[str, Any]:
    b = context.budget
    return overlay_png_levels(_config(context), {"before": 6, "after": 1}, b["requests"], b["seconds"], b["rounds"])


STAGE_NOTES = {
    "decode": "bytes to RGB pixels (`castream_decode_duration_seconds`)",
    "preprocess": "resize, crop, normalise (`castream_preprocess_duration_seconds`)",
    "queue wait": "until its batch runs, incl. the batching delay (`castream_queue_wait_seconds`)",
    "inference": "`session.run` of its one-image batch (`castream_inference_duration_seconds`)",
    "encode": "labels, grid, PNG, JSON (`castream_encode_duration_seconds`)",
    "rest": "body reading and parsing, thread hand-offs, framework (request minus the above)",
    "request": "`castream_request_duration_seconds`",
}


def _render_stages(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    single = r["single"]
    modes = list(single)
    lines = [
        "One client, one image per request (so every batch holds one image), mean milliseconds per request from the "
        "service's own histograms (`_sum` / `_count` before and after each phase), by `attention` option.",
        "",
    ]
    rows = []
    for stage, note in STAGE_NOTES.items():
        cells = []
        for mode in modes:
            stages = single[mode]["stages_ms"]
            share = stages[stage] / stages["request"] * 100 if stage != "request" and stages["request"] else None
            cells.append(fmt(stages[stage], 2) + (f" ({share:.0f} %)" if share is not None else ""))
        rows.append([f"{stage}: {note}", *cells])
    client = [f"{fmt(single[m]['client_p50_ms'])} / {fmt(single[m]['client_p99_ms'])}" for m in modes]
    rows.append(["client p50 / p99 (adds HTTP on loopback)", *client])
    lines += table(["stage (ms per request)", *(f"`attention={m}`" for m in modes)], rows)
    return [*lines, "", *_loaded(results, r["loaded"])]


def _loaded(results: dict[str, Any], loaded: dict[str, Any]) -> list[str]:
    """The same stages under load, and how the batches went, against raw ``session.run`` at that batch size."""
    stages, c = loaded["stages_ms"], loaded["concurrency"]
    per_image = ", ".join(f"{stage} {stages[stage]:.2f} ms" for stage in ("decode", "preprocess", "encode"))
    raw = {p["batch_size"]: p for p in result_of(results, "batch") or []}
    size = round(loaded["mean_batch"])
    alone = f" (alone, a batch of {size} takes {raw[size]['p50_ms']:.1f} ms: see below)" if size in raw else ""
    return [
        f"Under load, {c} clients with `attention=grid`: {fmt(loaded['images_per_second'])} images/s, batches of "
        f"{loaded['mean_batch']:.1f} images on average; one `session.run` took {loaded['run_ms']:.1f} ms{alone} and "
        f"one was running {loaded['busy'] * 100:.0f} % of the time. Our own work per image: {per_image}, besides "
        f"HTTP and parsing; queue wait {stages['queue wait']:.2f} ms. On {results['machine']['usable_cores']} cores "
        "this work competes with ONNX Runtime's threads for the CPU, and between batches the next one is still being "
        "read and decoded.",
        "",
    ]


OURS = ("decode", "preprocess", "encode", "rest")  # stages that are our code, not ONNX Runtime or a set delay


def _slowest_ours(results: dict[str, Any], before_encode_ms: float) -> list[str]:
    """A sentence naming the largest stage of our own code in an overlay request, with the old PNG level."""
    overlay = result_of(results, "stages", "single", "overlay", "stages_ms")
    if overlay is None:
        return []
    costs = {stage: overlay[stage] for stage in OURS} | {"encode": before_encode_ms}
    slowest = max(costs, key=costs.__getitem__)
    others = ", ".join(f"{stage} {costs[stage]:.1f} ms" for stage in OURS if stage != slowest)
    return [
        f"With the old PNG level, the largest stage of our own code in an `attention=overlay` request was "
        f"**{slowest}** ({costs[slowest]:.1f} ms; {others}). Inference belongs to ONNX Runtime, and the queue wait at "
        "concurrency 1 is the batching delay (`CASTREAM_MAX_BATCH_DELAY_MS`), a setting rather than work.",
        "",
    ]


def _render_overlay(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    before, after, c = r["before"], r["after"], r["concurrency"]
    lines = [
        *_slowest_ours(results, before["encode_ms"]),
        f"The overlay PNG was written at zlib level {before['png_level']} (Pillow's default); the service now writes "
        f"level {after['png_level']} (`CASTREAM_OVERLAY_PNG_LEVEL`): the same pixels, a somewhat larger file. Both "
        f"settings ran in this run with `attention=overlay`, in ABBA order ({r['rounds']} round(s), averaged).",
        "",
    ]
    keys = [
        ("encode ms per request (server)", "encode_ms", 2),
        ("request ms (server)", "request_ms", 1),
        ("client p50 ms, concurrency 1", "c1_p50_ms", 1),
        ("client p99 ms, concurrency 1", "c1_p99_ms", 1),
        (f"images/s, concurrency {c}", f"c{c}_images_per_second", 1),
        (f"client p50 ms, concurrency {c}", f"c{c}_p50_ms", 1),
        ("PNG bytes", "png_bytes", 0),
    ]
    rows = [
        [label, fmt(before[key], digits), fmt(after[key], digits), fmt(after[key] / before[key], 2) + "x"]
        for label, key, digits in keys
        if before.get(key)
    ]
    header = ["", f"before (level {before['png_level']})", f"after (level {after['png_level']})", "after / before"]
    return [*lines, *table(header, rows), ""]


SECTIONS = (
    Section(
        "stages",
        "Where the time goes in one request",
        full={"requests": 150, "seconds": 20.0},
        quick={"requests": 12, "seconds": 5.0},
        run=_run_stages,
        render=_render_stages,
    ),
    Section(
        "overlay_png",
        "Made faster: the overlay PNG, before and after",
        full={"requests": 150, "seconds": 20.0, "rounds": 2},
        quick={"requests": 12, "seconds": 5.0, "rounds": 1},
        run=_run_overlay,
        render=_render_overlay,
    ),
)
