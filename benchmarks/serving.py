"""The service measured from outside, with ``wrk`` on loopback. ``load``: beside the same work done in process, on
one model and image set, then an overload at twice the measured capacity on a short queue and the recovery after
it; and what users send (0.1 to 12 MP, JPEG and PNG, as multipart forms, plain and with whole-image overlays),
each file beside its own work in process, and one serving process against two. From the service's own metrics,
scraped before and after a phase: where the time of one request goes and how batches went under load
(``stages``), what the overlay PNG's zlib level costs (``overlay_png``), and when a batching delay pays
(``batch_delay``)."""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from benchmarks import harness
from benchmarks.sections import Aim, Section, body, counts, dig, fmt, pct, result_of, table
from service.imaging import decode_reduced
from service.inputs import parse_json
from service.model import OnnxModel, load_model
from service.overlay import DISPLAY_SIDE
from service.preprocess import Preprocessor
from service.settings import Settings

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Upload:
    """One kind of file users send: ``harness.photo`` at ``width`` x ``height`` with its ``grain``, as a JPEG of
    ``quality`` or a PNG."""

    name: str
    width: int
    height: int
    grain: float = 6.0
    quality: int = 90
    kind: str = "JPEG"
    note: str = ""

    def make(self) -> bytes:
        return harness.photo(self.width, self.height, grain=self.grain, quality=self.quality, kind=self.kind)

    def label(self, size: int | None = None) -> str:
        """``0.1 MP JPEG 384x256``, with the file's size where given."""
        megapixels = self.width * self.height / 1e6
        shown = f"{megapixels:.1f}" if megapixels < 1 else f"{megapixels:.0f}"
        kib = "" if size is None else f", {size / 2**20:.2f} MiB" if size >= 2**20 * 0.5 else f", {size / 1024:.0f} KiB"
        return f"{shown} MP {self.kind} {self.width}x{self.height}{kib}" + (f" ({self.note})" if self.note else "")


REFERENCE = "reference"  # the load phases' photo: the upload every other is compared with
UPLOADS = {
    "small": Upload("small", 384, 256),
    REFERENCE: Upload(REFERENCE, harness.WIDTH, harness.HEIGHT),
    "2mp": Upload("2mp", 1632, 1224),
    "12mp_light": Upload("12mp_light", 4032, 3024, grain=1.5, quality=85, note="light grain, quality 85"),
    "12mp": Upload("12mp", 4032, 3024, note="grainy, quality 90"),
    "2mp_png": Upload("2mp_png", 1632, 1224, kind="PNG"),
}
TWELVE_MP = ("12mp_light", "12mp")  # held to the aims; real phone photos of 12 MP are about 1 to 4 MiB
WORKER_UPLOADS = ("small", "12mp")
PAGE_OVERLAY = 448  # what the upload page asks for on a 2x screen: its 224 CSS px images times devicePixelRatio
PAGE_FORMAT = "jpeg"  # and the format it asks for
VARIANTS = {  # what a request asks for beyond the top-1 label, by the name its figures carry
    "plain": "/classify?top_k=1",
    "overlay_page": "/classify?top_k=1&attention=overlay&overlay_on=image"
    f"&overlay_size={PAGE_OVERLAY}&overlay_format={PAGE_FORMAT}",
    "overlay_default": "/classify?top_k=1&attention=overlay&overlay_on=image",  # the API's own size, DISPLAY_SIDE
}
RECOVERY_AIM_S = 1.0  # from an overload's end to the first 200: the queue's backlog drained
PLAIN_AIM, PAGE_AIM = 2.0, 3.0  # a 12 MP photo's p50 over the reference's plain p50: plain, and with the page's overlay


def upload_work(onnx: OnnxModel, prepare: Preprocessor, image: bytes, requests: int, seconds: float) -> dict:
    """One image file's work in process, the service's way: decoded at the scale the model needs
    (``decode_reduced`` with the preprocessor's decode side), preprocessed, run at batch 1. Medians in ms of the
    whole and of each step, over at most ``requests`` repetitions and about ``seconds``."""
    limit = Settings.model_fields["max_image_pixels"].default

    def once() -> tuple[float, float, float]:
        start = time.perf_counter()
        decoded = decode_reduced(image, limit, prepare.decode_side)
        read = time.perf_counter()
        prepared = prepare(decoded.image, 0, decoded.size)
        ready = time.perf_counter()
        onnx.run(prepared.input[None])
        return read - start, ready - read, time.perf_counter() - ready

    once()  # warm-up
    steps: list[tuple[float, float, float]] = []
    begin = time.perf_counter()
    while len(steps) < max(1, requests) and time.perf_counter() - begin < seconds:
        steps.append(once())
    columns = [[step[i] for step in steps] for i in range(3)]
    return {"p50_ms": harness.percentile_ms(map(sum, steps), 50),
            **{f"{name}_ms": harness.percentile_ms(column, 50)
               for name, column in zip(("decode", "preprocess", "run"), columns, strict=True)}}  # fmt: skip


LONE_ANSWERS, CLIENT_ANSWERS = 12, 4  # what an uploads phase lasts for: answers at concurrency 1, and per client


def phase_seconds(latency_s: float, concurrency: int, least: float) -> int:
    """Whole seconds (wrk's unit), at least ``least``, for a closed-loop phase of requests that take ``latency_s``
    alone: about ``LONE_ANSWERS`` answers at concurrency 1, ``CLIENT_ANSWERS`` per client at any other, the clients
    sharing the usable cores."""
    share = max(1.0, concurrency / len(os.sched_getaffinity(0)))
    answers = LONE_ANSWERS if concurrency == 1 else CLIENT_ANSWERS
    return math.ceil(max(least, answers * latency_s * share))


def form_phase(
    server: harness.Service, paths: list[Path], concurrency: int, requests: int, seconds: int, target: str
) -> harness.Phase:
    """A closed-loop ``wrk`` phase of multipart ``paths`` lasting ``seconds``; run again, twice and then four times
    as long, while fewer requests were answered than there are clients: a machine busier than when the phase's
    length was chosen may answer a large photo's first requests only after it ended."""
    for length in (seconds, seconds * 2, seconds * 4):
        phase = harness.wrk_phase(server.port, paths, concurrency, requests, length, target=target,
                                  content_type=harness.MULTIPART)  # fmt: skip
        if phase.requests >= min(concurrency, requests):
            break
        log.warning("uploads: %d answers to %s in %d s from %d clients; again for longer", phase.requests, target,
                    length, concurrency)  # fmt: skip
    return phase


def upload_phases(
    server: harness.Service, onnx: OnnxModel, prepare: Preprocessor, files: dict[str, bytes], concurrency: int,
    requests: int, seconds: float, rounds: int,
) -> dict[str, Any]:  # fmt: skip
    """Each file sent alone as a multipart form, with each of ``VARIANTS``: the p50 at concurrency 1 and images/s at
    ``concurrency``, and the same file's work in process. Phases run variant by variant, the files side by side in
    alternating order over ``rounds`` rounds (averaged), so that a ratio between files is measured seconds apart;
    each phase bounded by ``requests``, and long enough (``phase_seconds``, at least ``seconds``) for the time one
    request of that file and variant took alone (``alone_ms``, the second of two checks made first; under load,
    the p50 at concurrency 1 where it is longer)."""
    statuses: dict[str, Counter[str]] = {name: Counter() for name in files}
    response_kib: dict[str, dict[str, float]] = {name: {} for name in files}
    latency: dict[tuple[str, str], float] = {}  # one request's seconds alone, which sizes the file's phases
    with harness.request_bodies(list(files.values()), harness.MULTIPART) as paths:
        bodies = dict(zip(files, paths, strict=True))
        for name, data in files.items():  # a check of the answer and a warm-up, twice each
            for variant, target in VARIANTS.items():
                for _ in range(2):
                    start = time.perf_counter()
                    status, answer = harness.get(server.port, target, harness.multipart_body(data), harness.MULTIPART)
                    latency[name, variant] = time.perf_counter() - start
                    if status != 200:
                        shown = UPLOADS[name].label(len(data))
                        raise RuntimeError(f"POST {target} with the {shown} answered {status}: {answer[:200]!r}")
                response_kib[name][variant] = len(answer) / 1024
        records = []
        for round_ in range(rounds):
            order = harness.round_order(list(files), round_)
            record: dict[str, dict[str, Any]] = {name: {} for name in files}
            for name in order:
                record[name]["in_process"] = upload_work(onnx, prepare, files[name], requests, seconds)
            for c, figure in ((1, "c1_p50_ms"), (concurrency, f"c{concurrency}_images_per_second")):
                for variant, target in VARIANTS.items():
                    log.info("uploads: %s at concurrency %d, round %d", variant, c, round_ + 1)
                    for name in order:
                        alone = latency[name, variant]
                        if c > 1:  # the p50 alone just measured, if longer: the machine's load as it is now
                            alone = max(alone, record[name]["c1_p50_ms"][variant] / 1000)
                        length = phase_seconds(alone, c, seconds)
                        before = scrape(server) if (c, variant) == (1, "plain") else {}
                        phase = form_phase(server, [bodies[name]], c, requests, length, target)
                        if before:  # where a plain request's time goes, from the service's histograms
                            record[name]["c1_plain_stages_ms"] = stage_means(change(before, scrape(server)), "grid")
                        statuses[name].update(phase.statuses)
                        record[name].setdefault(figure, {})[variant] = phase.p50_ms if c == 1 else phase.throughput
            records.append(record)
    rows = harness.averaged(records)
    reference = rows[REFERENCE]["c1_p50_ms"]["plain"]
    for name, row in rows.items():
        upload = UPLOADS[name]
        row["c1_over_reference"] = {variant: p50 / reference for variant, p50 in row["c1_p50_ms"].items()}
        row |= {"label": upload.label(len(files[name])), "bytes": len(files[name]), "format": upload.kind,
                "width": upload.width, "height": upload.height, "response_kib": response_kib[name],
                "alone_ms": {v: latency[name, v] * 1000 for v in VARIANTS},
                "statuses": dict(statuses[name])}  # fmt: skip
    return {"concurrency": concurrency, "seconds": seconds, "rounds": rounds, "reference": REFERENCE,
            "overlay_sizes": {"overlay_page": PAGE_OVERLAY, "overlay_default": DISPLAY_SIDE},
            "page_format": PAGE_FORMAT, "rows": rows}  # fmt: skip


def worker_phases(
    model: Path, files: dict[str, bytes], concurrency: int, requests: int, seconds: dict[str, int], rounds: int,
    **env: str,
) -> dict[str, Any]:  # fmt: skip
    """One serving process against two (``CASTREAM_WORKERS``), a fresh service each in alternating order over
    ``rounds`` rounds: each file's plain images/s at ``concurrency``, as a multipart form, in phases of its
    ``seconds``; and how many processes each service ran, which tells whether the setting took effect."""

    def measure(server: harness.Service, workers: int) -> dict[str, float]:
        warm_up = list(bodies.values())
        harness.wrk_phase(server.port, warm_up, concurrency, requests, 1.0, content_type=harness.MULTIPART)
        record = {"processes": float(server.processes())}
        for name, path in bodies.items():
            log.info("uploads: %s with %d serving process(es) at concurrency %d", name, workers, concurrency)
            phase = form_phase(server, [path], concurrency, requests, seconds[name], VARIANTS["plain"])
            record[name] = phase.throughput if set(phase.statuses) == {"200"} else math.nan
        return record

    with harness.request_bodies(list(files.values()), harness.MULTIPART) as paths:
        bodies = dict(zip(files, paths, strict=True))
        by_workers = harness.fresh_services(model, "CASTREAM_WORKERS", (1, 2), rounds, measure, **env)
    one, two = by_workers[1], by_workers[2]
    return {"concurrency": concurrency, "rounds": rounds, "processes": {"1": one["processes"], "2": two["processes"]},
            "images_per_second": {name: {"1": one[name], "2": two[name], "ratio": two[name] / one[name]}
                                  for name in files}}  # fmt: skip


def load(
    model: Path, requests: int = 20000, seconds: float = 10.0, batch_size: int = 8, concurrency: int = 8,
    high_concurrency: int = 32, images: int = 32, overload_factor: float = 2.0, overload_queue: int = 16,
    overload_concurrency: int = 64, upload_seconds: float = 1.0, upload_rounds: int = 1,
) -> dict[str, Any]:  # fmt: skip
    """Every phase, in one process and on one model; each bounded by ``requests`` and ``seconds`` (the uploads'
    phases by ``upload_seconds``, over ``upload_rounds`` rounds)."""
    config = {key: value for key, value in locals().items() if key not in ("model", "requests", "seconds")}
    report: dict[str, Any] = {"config": config}  # the run's shape, as the report describes it
    pictures = harness.make_images(images, harness.HEIGHT, width=harness.WIDTH)
    files = {name: upload.make() for name, upload in UPLOADS.items()}
    levels = (1, concurrency, high_concurrency)
    batches = {"CASTREAM_MAX_BATCH_SIZE": str(batch_size)}
    with harness.request_bodies(pictures) as bodies:
        log.info("in-process work at batch 1 and %d", batch_size)
        before = work_in_process(model, pictures, batch_size, requests, seconds / 2)
        with harness.Service(model, **batches) as server:
            harness.wrk_phase(server.port, bodies, high_concurrency, high_concurrency * 8, min(3.0, seconds))  # warm-up
            for c in levels:
                log.info("service at concurrency %d", c)
                report[f"service_c{c}"] = asdict(harness.wrk_phase(server.port, bodies, c, requests, seconds))
            after = work_in_process(model, pictures, batch_size, requests, seconds / 2)  # the service idle meanwhile
            onnx = load_model(model, ["cpu"], 0, 0)  # as the service opens it
            report["uploads"] = upload_phases(server, onnx, Preprocessor(onnx.info.preprocessing), files, concurrency,
                                              requests, upload_seconds, upload_rounds)  # fmt: skip
        work = report["work"] = {key: (before[key] + after[key]) / 2 for key in before}
        capacity = report["capacity"] = max(report[f"service_c{c}"]["throughput"] for c in levels[1:])
        rate, short = overload_factor * capacity, {"CASTREAM_MAX_QUEUE": str(overload_queue)}
        with harness.Service(model, **batches, **short, CASTREAM_MAX_IMAGES_PER_REQUEST="1") as server:
            # Warm-up at the overload itself, so that the phase measures the steady state (buffers, arenas).
            harness.wrk_phase(server.port, bodies, overload_concurrency, requests, min(3.0, seconds), rate)
            log.info("overload: %.0f requests/s on %d connections", rate, overload_concurrency)
            with harness.sampled_rss(server.process.pid, 0.2) as rss:
                burst = harness.wrk_phase(server.port, bodies, overload_concurrency, requests, seconds, rate)
            back_s, refused = first_answer(server.port, bodies[0])
            recovery = harness.wrk_phase(server.port, bodies, 1, 20, min(5.0, seconds))
            ready = harness.get(server.port, "/readyz")[0]
    chosen, rows = {name: files[name] for name in WORKER_UPLOADS}, report["uploads"]["rows"]
    alone = {name: max(rows[name]["alone_ms"]["plain"], rows[name]["c1_p50_ms"]["plain"]) / 1000 for name in chosen}
    lengths = {name: phase_seconds(alone[name], concurrency, upload_seconds) for name in chosen}
    report["uploads"]["workers"] = worker_phases(model, chosen, concurrency, requests, lengths, upload_rounds,
                                                 **batches)  # fmt: skip
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
    report["recovery"] = {"statuses": recovery.statuses, "p50_ms": recovery.p50_ms, "readyz": ready,
                          "first_200_s": back_s, "refused_before": refused}  # fmt: skip
    report["recovered"] = recovery.statuses == {"200": recovery.requests} and ready == 200
    return report


def first_answer(port: int, body: Path, limit_s: float = 30.0) -> tuple[float, int]:
    """Seconds until ``body`` is answered 200, sent again 10 ms after each refusal, and how many were refused first:
    right after an overload the queue still holds its backlog, and a request then meets 503 until it drains.
    RuntimeError if no 200 came within ``limit_s``."""
    data, refused, started = body.read_bytes(), 0, time.perf_counter()
    while time.perf_counter() - started < limit_s:
        status, answer = harness.get(port, "/classify?top_k=1", data)
        if status == 200:
            return time.perf_counter() - started, refused
        if status != 503:
            raise RuntimeError(f"after the overload POST /classify answered {status}: {answer[:200]!r}")
        refused += 1
        time.sleep(0.01)
    raise RuntimeError(f"after the overload no request was answered 200 within {limit_s:g} s ({refused} refused)")


def _aims_uploads(rows: dict[str, Any] | None) -> list[Aim]:
    reference = f"the {harness.WIDTH}x{harness.HEIGHT} JPEG's plain p50"
    aims = []
    for name in TWELVE_MP:
        size = dig(rows, name, "bytes")
        label = f"12 MP JPEG of {size / 2**20:.2f} MiB" if size else f"12 MP JPEG ({UPLOADS[name].note})"
        aims += [
            Aim(f"{label} at concurrency 1: plain p50 / {reference}", dig(rows, name, "c1_over_reference", "plain"),
                PLAIN_AIM, False),
            Aim(f"{label} at concurrency 1: p50 with the page's {PAGE_OVERLAY} px {PAGE_FORMAT.upper()} whole-image "
                f"overlay / {reference}",
                dig(rows, name, "c1_over_reference", "overlay_page"), PAGE_AIM, False),
        ]  # fmt: skip
    return aims


def _aims_load(r: dict[str, Any] | None) -> list[Aim]:
    c, high = dig(r, "config", "concurrency") or 8, dig(r, "config", "high_concurrency") or 32
    growth = dig(r, "overload", "memory", "growth")
    return [
        *(Aim(f"service {p} at concurrency 1 over the in-process work's {p}", dig(r, f"overhead_c1_{p}_ms"), goal,
              False, " ms") for p, goal in (("p50", 2), ("p99", 5))),
        *(Aim(f"throughput at concurrency {n} / in-process batch, serial decoding", dig(r, f"ratio_c{n}_serial_decode"),
              1.0, True) for n in (c, high)),
        Aim(f"throughput at concurrency {high} / at {c}", dig(r, "ratio_high_low"), 1.0, True),
        Aim("overload at twice capacity: goodput / capacity", dig(r, "overload", "goodput_ratio"), 0.9, True),
        Aim("overload: p99 of the 503 answers", dig(r, "overload", "rejected_p99_ms"), 50, False, " ms"),
        Aim("overload: the service's memory growth over the phase", None if growth is None else growth * 100, 5, False,
            " %"),
        Aim("overload: from the burst's end to the first 200", dig(r, "recovery", "first_200_s"), RECOVERY_AIM_S,
            False, " s"),
        *_aims_uploads(dig(r, "uploads", "rows")),
    ]  # fmt: skip


def _three(values: dict[str, float], digits: int = 1, bold: tuple[str, ...] = ()) -> str:
    """A figure of each variant, ``plain / page overlay / default overlay``; those in ``bold`` in bold."""
    return " / ".join(f"**{fmt(values[v], digits)}**" if v in bold else fmt(values[v], digits) for v in VARIANTS)


def _render_uploads(u: dict[str, Any]) -> list[str | list[str]]:
    c, sizes, rows = u["concurrency"], u["overlay_sizes"], u["rows"]
    page_format = u.get("page_format", "png")  # older results: the page asked for PNG
    variants = f"plain / overlay {sizes['overlay_page']} / overlay {sizes['overlay_default']}"
    lines = [[UPLOADS[name].label() + (" (reference)" if name == u["reference"] else ""), fmt(row["bytes"] / 1024, 0),
              f"{fmt(row['in_process']['p50_ms'])} ({fmt(row['in_process']['decode_ms'])})",
              f"{fmt(row['c1_plain_stages_ms']['decode'])} / {fmt(row['c1_plain_stages_ms']['rest'])}",
              _three(row["c1_p50_ms"]), _three(row[f"c{c}_images_per_second"]),
              _three(row["c1_over_reference"], 2, ("plain", "overlay_page") if name in TWELVE_MP else ()),
              counts(row["statuses"])]
             for name, row in rows.items()]  # fmt: skip
    header = ["image", "KiB", "in process: p50 ms (decode)", "service, plain, concurrency 1: decode / rest ms",
              f"concurrency 1: p50 ms, {variants}",
              f"concurrency {c}: images/s, {variants}", "concurrency 1: p50 / the reference's plain p50",
              "answers"]  # fmt: skip
    workers, reference = u["workers"], UPLOADS[u["reference"]].label()
    one, two = workers["processes"]["1"], workers["processes"]["2"]
    effect = f"the two services ran {one:.0f} and {two:.0f} processes"
    if two <= one:
        effect = f"**`CASTREAM_WORKERS=2` was not in effect: {effect}**"
    served = [[UPLOADS[name].label(rows[name]["bytes"]), fmt(n["1"]), fmt(n["2"]), fmt(n["ratio"], 2)]
              for name, n in workers["images_per_second"].items()]  # fmt: skip
    return [
        "What users send: one file per request as a multipart form (field `file`, as a browser or `curl -F` sends "
        f"it), on the service of the concurrency phases, plain (`top_k=1`) and with the whole-image overlay "
        f"(`attention=overlay&overlay_on=image`) at {sizes['overlay_page']} px as {page_format.upper()} "
        f"(`overlay_size`, `overlay_format`: what the upload page asks for on a 2x screen) and at the API's default, "
        f"{sizes['overlay_default']} px as PNG. Each phase at least "
        f"{u['seconds']:g} s, longer for a slower file (about {LONE_ANSWERS} answers at concurrency 1, "
        f"{CLIENT_ANSWERS} per client at {c}); the files side by side, variant by variant, in alternating order over "
        f"{u['rounds']} round(s), averaged. In process: the same file decoded as the service decodes it (at the "
        "scale the model needs), preprocessed and run at batch 1. The service's own decode and the rest of its "
        "time per plain request (reading the body, parsing the form, thread hand-offs and the framework: the "
        "request less every stage) come from its histograms. The reference is the concurrency phases' photo, "
        f"{reference}. A JPEG's decode costs by its bytes, not its pixels: phone photos of 12 MP are about 1 to 4 "
        "MiB.",
        table(header, lines),
        f"In bold, the ratios held to aims: at most {PLAIN_AIM:g} plain and {PAGE_AIM:g} with the page's overlay. "
        f"With the API's default overlay ({sizes['overlay_default']} px) the 12 MP photos take "
        + " and ".join(f"{fmt(rows[n]['c1_over_reference']['overlay_default'], 2)}x" for n in TWELVE_MP)
        + " the reference's plain p50 (a figure, not an aim).",
        f"One serving process against two (`CASTREAM_WORKERS`), plain at concurrency {workers['concurrency']}, a "
        f"fresh service each, {workers['rounds']} round(s) in alternating order, averaged ({effect}); the aim of two "
        "over one is held on a null model, in the ceiling section.",
        table(["image", "1 process: images/s", "2 processes: images/s", "2 / 1"], served),
    ]


def _render_load(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
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
    overload = (
        f"- Overload, paced at {config['overload_factor']:g}x the capacity ({r['capacity']:.1f} requests/s, the better "
        f"of concurrency {c} and {high}) on {config['overload_concurrency']} connections, queue of "
        f"{config['overload_queue']} images: {burst['sent_per_second']:.0f} requests/s sent, answers "
        f"{counts(burst['statuses'])}; goodput {burst['throughput']:.1f} requests/s = "
        f"**{burst['goodput_ratio']:.2f}** of capacity; {pct(burst['rejected_share'])} answered 503 (p50 "
        f"{fmt(burst['rejected_p50_ms'], 2)} ms, p99 **{fmt(burst['rejected_p99_ms'], 2)} ms**, `Retry-After: "
        f"{burst['retry_after']}`); the service's memory {memory['start_mib']:.0f} MiB before, "
        f"{memory['peak_mib']:.0f} at most, {memory['end_mib']:.0f} after ({memory['growth'] * 100:+.1f} % over the "
        f"phase, {memory['second_half_growth'] * 100:+.1f} % over its second half, after a warm-up at the same rate). "
        f"Afterwards, one request after another: the first 200 **{fmt(recovery['first_200_s'] * 1000, 0)} ms** after "
        f"the burst ended ({recovery['refused_before']} answered 503 before it, while the queue's backlog drained), "
        f"then {counts(recovery['statuses'])} at p50 {fmt(recovery['p50_ms'], 2)} ms and `/readyz` "
        f"{recovery['readyz']}: {'recovered' if r['recovered'] else '**did not recover**'}."
    )
    return body(
        f"The same {config['images']} JPEGs ({harness.WIDTH}x{harness.HEIGHT}), each request one image as JSON "
        "base64 to `POST /classify?top_k=1`, from `wrk` with `benchmarks/load.lua` (one connection per thread) on "
        "loopback. The "
        "in-process work is the service's code without the service (same model options and threads), measured "
        "before and after the service phases and averaged.",
        table(["", "images/s", "p50 ms", "p99 ms"], rows),
        [f"- Concurrency 1 over the in-process work: p50 **{r['overhead_c1_p50_ms']:+.2f} ms**, p99 "
         f"**{r['overhead_c1_p99_ms']:+.2f} ms** (HTTP, body reading, thread hand-offs, queue, response).",
         f"- Throughput against the in-process batch of {b} with serial decoding: "
         f"**{r[f'ratio_c{c}_serial_decode']:.2f}** at concurrency {c}, **{r[f'ratio_c{high}_serial_decode']:.2f}** "
         f"at {high} ({r[f'ratio_c{c}_run_only']:.2f} and {r[f'ratio_c{high}_run_only']:.2f} of `run` alone); "
         f"concurrency {high} / {c}: {r['ratio_high_low']:.2f}.", overload],
        *(_render_uploads(r["uploads"]) if "uploads" in r else []),
    )  # fmt: skip


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
    """Mean milliseconds per ``/classify`` request of each stage over a scrape-to-scrape ``change``, and ``rest``;
    ValueError where no request was answered between the scrapes."""
    route = (("route", "/classify"),)
    if (requests := delta.get((f"{REQUEST}_count", route), 0.0)) <= 0:
        raise ValueError(f"no /classify request was answered between the two scrapes (count delta {requests})")
    means = {stage: delta.get((f"{histogram}_sum", (("attention", mode),) if stage == "encode" else ()), 0.0)
             / requests * 1000 for stage, histogram in STAGES.items()}  # fmt: skip
    request = delta[(f"{REQUEST}_sum", route)] / requests * 1000
    return means | {"rest": request - sum(means.values()), "request": request}


def batch_profile(delta: Totals, seconds: float) -> dict[str, float]:
    """How the batches went over a scrape-to-scrape ``change`` of ``seconds``: their mean size, the time of one
    ``session.run`` and the share of the time one was running; ValueError where no batch ran."""
    if (runs := delta.get(("castream_inference_duration_seconds_count", ()), 0.0)) <= 0:
        raise ValueError(f"no batch ran between the two scrapes (count delta {runs})")
    busy = delta[("castream_inference_duration_seconds_sum", ())]
    images = delta[("castream_batch_size_images_sum", ())]
    return {"batches": runs, "mean_batch": images / runs, "run_ms": busy / runs * 1000, "busy": busy / seconds}


def scrape(server: harness.Service) -> Totals:
    """The service's histogram totals now."""
    return histogram_totals(harness.get(server.port, "/metrics")[1].decode())


def watched(server: harness.Service, bodies: list[Path], *args: Any, **kwargs: Any) -> tuple[harness.Phase, Totals]:
    """A ``wrk_phase`` on the server, and what the service's totals grew by during it."""
    before = scrape(server)
    phase = harness.wrk_phase(server.port, bodies, *args, **kwargs)
    return phase, change(before, scrape(server))


def request_stages(model: Path, requests: int = 150, seconds: float = 20.0, concurrency: int = 8) -> dict[str, Any]:
    """Per ``attention`` mode at concurrency 1: client p50/p99 and the mean time of each stage (ms); then
    ``attention=grid`` at ``concurrency``: throughput, stages per image and how the batches went."""
    single: dict[str, Any] = {}
    with harness.request_bodies(harness.model_images(model, 32)) as bodies, harness.Service(model) as server:
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

    def measure(server: harness.Service, level: int) -> dict[str, float]:
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

    def measure(server: harness.Service, delay: float) -> dict[str, dict[str, float]]:
        harness.wrk_phase(server.port, bodies, 8, 10**6, 2)  # warm-up
        rows = {}
        for c in concurrencies:
            phase, delta = watched(server, bodies, c, 10**6, seconds)
            images, batches = (delta.get(key, 0.0) for key in BATCH_SUMS)
            rows[str(c)] = {"throughput": phase.throughput, "p50_ms": phase.p50_ms, "p99_ms": phase.p99_ms,
                            "mean_batch": images / batches if batches else float("nan")}  # fmt: skip
        return rows

    with harness.request_bodies(harness.make_images(16, harness.HEIGHT, width=harness.WIDTH)) as bodies:
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
    return body(
        "One `wrk` connection, one image per request as JSON base64 (so every batch holds one image), mean "
        "milliseconds per request from the service's own histograms (`_sum` / `_count` before and after each "
        "phase), by `attention` option.",
        table(["stage (ms per request)", *(f"`attention={m}`" for m in single)], rows),
        f"Under load, {loaded['concurrency']} clients with `attention=grid`: {fmt(loaded['images_per_second'])} "
        f"images/s, batches of {loaded['mean_batch']:.1f} images on average; one `session.run` took "
        f"{loaded['run_ms']:.1f} ms{alone} and one was running {loaded['busy'] * 100:.0f} % of the time. Our own work "
        f"per image: {', '.join(f'{s} {stages[s]:.2f} ms' for s in ('decode', 'preprocess', 'encode'))}, besides HTTP "
        f"and parsing; queue wait {stages['queue wait']:.2f} ms. On {results['machine']['usable_cores']} cores this "
        "work competes with ONNX Runtime's threads for the CPU, and between batches the next one is still being read "
        "and decoded.",
    )


OURS = ("decode", "preprocess", "encode", "rest")  # stages that are our code, not ONNX Runtime or a set delay


def _render_overlay(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    before, after, c = r["before"], r["after"], r["concurrency"]
    slowest = ""
    if (overlay := result_of(results, "stages", "single", "overlay", "stages_ms")) is not None:
        costs = {stage: overlay[stage] for stage in OURS} | {"encode": before["encode_ms"]}
        most = max(costs, key=costs.__getitem__)
        others = ", ".join(f"{stage} {costs[stage]:.1f} ms" for stage in OURS if stage != most)
        slowest = (f"With the old PNG level, the largest stage of our own code in an `attention=overlay` request was "
                   f"**{most}** ({costs[most]:.1f} ms; {others}). Inference belongs to ONNX Runtime, and the queue "
                   "wait at concurrency 1 is the batching delay (`CASTREAM_MAX_BATCH_DELAY_MS`), a setting rather "
                   "than work.")  # fmt: skip
    keys = [("encode ms per request (server)", "encode_ms", 2), ("request ms (server)", "request_ms", 1),
            ("client p50 ms, concurrency 1", "c1_p50_ms", 1), ("client p99 ms, concurrency 1", "c1_p99_ms", 1),
            (f"images/s, concurrency {c}", f"c{c}_images_per_second", 1),
            (f"client p50 ms, concurrency {c}", f"c{c}_p50_ms", 1), ("PNG bytes", "png_bytes", 0)]  # fmt: skip
    rows = [[label, fmt(before[key], digits), fmt(after[key], digits), fmt(after[key] / before[key], 2) + "x"]
            for label, key, digits in keys if before.get(key)]  # fmt: skip
    header = ["", f"before (level {before['png_level']})", f"after (level {after['png_level']})", "after / before"]
    return body(
        slowest,
        f"The overlay PNG was written at zlib level {before['png_level']} (Pillow's default); the service now writes "
        f"level {after['png_level']} (`CASTREAM_OVERLAY_PNG_LEVEL`): the same pixels, a somewhat larger file. Both "
        f"settings ran in this run with `attention=overlay`, in ABBA order ({r['rounds']} round(s), averaged).",
        table(header, rows),
    )


def _render_delays(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    rows = [[delay, c, fmt(row["throughput"]), fmt(row["p50_ms"], 2), fmt(row["p99_ms"], 2), fmt(row["mean_batch"], 2)]
            for delay, by_c in r["delays_ms"].items() for c, row in by_c.items()]  # fmt: skip
    return body(
        f"A fresh service per delay, `wrk` as in the load section, {r['seconds']:g} s per phase, {r['rounds']} "
        "round(s) in alternating order, averaged; the mean batch from `castream_batch_size_images`. A delay adds at "
        "least itself to a lone request; it pays only where a batch's run has a large fixed cost.",
        table(["delay ms", "concurrency", "requests/s", "p50 ms", "p99 ms", "mean batch"], rows),
    )


SECTIONS = (
    Section("load", "The service from outside, against its own work in process", load,
            {"requests": 24, "seconds": 2.0}, _render_load, _aims_load),
    Section("stages", "Where the time goes in one request", request_stages, {"requests": 12, "seconds": 5.0},
            _render_stages),
    Section("overlay_png", "Made faster: the overlay PNG, before and after", overlay_png_levels,
            {"requests": 12, "seconds": 5.0, "rounds": 1}, _render_overlay),
    Section("batch_delay", "When a batching delay pays", batch_delays,
            {"delays": (0.0, 30.0), "seconds": 1.0, "rounds": 1}, _render_delays),
)  # fmt: skip
