"""Reliability, loopback only: fuzzing every operation in process; ``python -m service`` under mixed traffic, beside
slow clients, and killed under load and restarted. ``python -m benchmarks soak --soak-s 600``, and so on."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from benchmarks.harness import HOST, Service, get, sampled_rss
from benchmarks.sections import Aim, Section, counts, dig, fmt, table
from service.app import create_app
from service.settings import Settings

QUIET = {"CASTREAM_LOG_LEVEL": "error"}  # one request in ten is bad on purpose: their warnings are expected
SLOW_HEAD = b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
Record = tuple[float, float, object]  # a request's start offset and latency in seconds, and its status (or error)


def _images(rng: random.Random) -> tuple[list[bytes], list[bytes]]:
    """Good image files (noise over a gradient; many sizes, modes and formats) and bad ones."""
    good, nprng = [], np.random.default_rng(0)
    for size in (16, 64, 224, 500, 1024, 1600):
        for mode, kind in (("RGB", "JPEG"), ("L", "PNG"), ("RGBA", "PNG"), ("P", "GIF"), ("RGB", "WEBP")):
            w, h = size, max(8, int(size * rng.uniform(0.5, 1.5)))
            pixels = nprng.integers(0, 255, (h, w, 3), np.uint8) // 4 + np.linspace(0, 180, w, dtype=np.uint8)[:, None]
            buffer = io.BytesIO()
            Image.fromarray(pixels.astype(np.uint8)).convert(mode).save(buffer, format=kind)
            good.append(buffer.getvalue())
    return good, [b"", b"not an image", good[3][: len(good[3]) // 2]]


def _request(rng: random.Random, good: list[bytes], bad: list[bytes], model: str) -> dict[str, Any]:
    """One request of the mix (see ``_render_soak``), as ``httpx`` POST keywords; one in ten has a bad image."""
    data = rng.choice(good if rng.random() >= 0.1 else bad)
    kind, encoded, infer = rng.random(), base64.b64encode(data).decode(), f"/v2/models/{model}/infer"
    if kind < 0.5:  # multipart /classify
        params = {"attention": rng.choice(["none", "grid", "overlay"]), "top_k": str(rng.randint(1, 5))}
        params |= {key: value for key, value in (("class_maps", "true"), ("overlay_on", "image")) if rng.random() < 0.2}
        files = [("file", ("x", data, "application/octet-stream"))] * rng.choice([1, 1, 1, 2, 4])
        return {"url": "/classify", "params": params, "files": files}
    if kind < 0.65:  # JSON base64 /classify
        return {"url": "/classify", "json": {"images": [encoded]}}
    tensor: dict[str, Any] = {"name": "image_bytes", "datatype": "BYTES", "shape": [1]}
    if kind < 0.85:  # /v2 JSON
        outputs = [{"name": "logits", "parameters": {"classification": 3}}]
        return {"url": infer, "json": {"inputs": [tensor | {"data": [encoded]}], "outputs": outputs}}
    tensor["parameters"] = {"binary_data_size": len(data) + 4}  # /v2 binary: a JSON header, then the tensor
    outputs = [{"name": "logits", "parameters": {"binary_data": True}}]
    header = json.dumps({"inputs": [tensor], "outputs": outputs}).encode()
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    return {"url": infer, "content": header + len(data).to_bytes(4, "little") + data, "headers": headers}


def _whole(response: httpx.Response) -> bool:
    """Whether an answer is what its status promises: a 200 carries predictions or outputs, an error its code."""
    size = response.headers.get("inference-header-content-length")  # /v2 binary: a JSON header, then the tensors
    wanted = ("predictions", "outputs") if response.status_code == 200 else ("code", "error")  # /v2 errors: "error"
    with contextlib.suppress(ValueError):
        answer = json.loads(response.content[: None if size is None else int(size)])
        return isinstance(answer, dict) and any(key in answer for key in wanted)
    return False


async def _load(server: Service, seconds: float, concurrency: int, seed: int, *beside: Coroutine) -> tuple[list, list]:
    """Closed-loop clients of the mix and the ``beside`` coroutines: a Record per request, what those returned."""
    model = json.loads(get(server.port, "/v1/model")[1])["name"]
    good, bad = _images(random.Random(seed))
    records: list[Record] = []
    begin = time.monotonic()

    async def client(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            while time.monotonic() - begin < seconds:
                start = time.monotonic()
                try:
                    response = await http.post(**_request(rng, good, bad, model))
                    outcome: object = response.status_code if _whole(response) else "incomplete answer"
                except httpx.TransportError as exc:
                    outcome = type(exc).__name__
                    await asyncio.sleep(0.05)
                records.append((start - begin, time.monotonic() - start, outcome))

    done = await asyncio.gather(*beside, *(client(i) for i in range(concurrency)))
    return records, done[: len(beside)]


def _count(records: list[Any]) -> dict[str, int]:
    """How many times each outcome (each record's last item: a status or an error's name) occurred, sorted."""
    return dict(sorted(Counter(str(record[-1]) for record in records).items()))


def _p99(records: list[Record]) -> float:
    """p99 in ms of the answers 200 among the records."""
    latencies = [latency for _, latency, outcome in records if outcome == 200]
    return statistics.quantiles(latencies, n=100)[98] * 1000 if len(latencies) > 1 else math.nan


def soak(model: Path, soak_s: float = 600.0, concurrency: int = 16, warm_up_s: float = 30.0) -> dict[str, Any]:
    """``concurrency`` clients of the mix for ``soak_s`` after ``warm_up_s``; memory sampled every 5 s."""
    with Service(model, **QUIET) as server:
        asyncio.run(_load(server, warm_up_s, concurrency, 1))
        rss_start = server.rss_mib()
        with sampled_rss(server.process.pid, 5.0) as samples:
            records, _ = asyncio.run(_load(server, soak_s, concurrency, 0))
        rss_end = server.rss_mib()
    window, statuses = min(60.0, soak_s / 3), _count(records)
    return {
        "seconds": soak_s, "warm_up_s": warm_up_s, "concurrency": concurrency, "requests": len(records),
        "statuses": statuses, "server_errors": sum(n for status, n in statuses.items() if status.startswith("5")),
        "rss_mib_after_warmup": rss_start, "rss_mib_end": rss_end, "rss_mib_max": max(samples, default=rss_end),
        "rss_growth_mib": rss_end - rss_start, "window_s": window,
        "p99_ms_first_window": _p99([r for r in records if r[0] < window]),
        "p99_ms_last_window": _p99([r for r in records if r[0] >= soak_s - window]),
    }  # fmt: skip


async def _trickle(port: int, timeout_s: float) -> tuple[float, str]:
    """A slow client sending its declared 100 kB body a byte every 0.5 s: the seconds until answered, the status."""
    begin, status = time.monotonic(), "no answer"
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(SLOW_HEAD)
    try:
        while status == "no answer" and time.monotonic() - begin < timeout_s * 3:
            writer.write(b" ")
            await writer.drain()
            with contextlib.suppress(TimeoutError):  # none within 0.5 s: another byte
                line = await asyncio.wait_for(reader.readline(), 0.5)
                status = line.split()[1].decode() if line else "closed"
    except (ConnectionError, OSError) as exc:
        status = type(exc).__name__
    writer.close()
    return time.monotonic() - begin, status


def slow_clients(
    model: Path, seconds: float = 30.0, concurrency: int = 16, slow: int = 50, body_timeout_s: float = 10.0
) -> dict[str, Any]:
    """Normal traffic alone, then beside ``slow`` connections trickling their bodies."""
    with Service(model, CASTREAM_BODY_TIMEOUT_S=str(body_timeout_s), **QUIET) as server:
        asyncio.run(_load(server, min(10.0, seconds), concurrency, 3))  # warm-up
        alone, _ = asyncio.run(_load(server, seconds, concurrency, 4))
        trickles = [_trickle(server.port, body_timeout_s) for _ in range(slow)]
        together, trickled = asyncio.run(_load(server, seconds, concurrency, 4, *trickles))
    return {
        "seconds": seconds, "concurrency": concurrency, "slow_connections": slow, "body_timeout_s": body_timeout_s,
        "statuses_alone": _count(alone), "statuses_beside_slow": _count(together),
        "p99_ms_alone": _p99(alone), "p99_ms_beside_slow": _p99(together), "p99_ratio": _p99(together) / _p99(alone),
        "slow_outcomes": _count(trickled), "slow_cut_off_after_s_max": max((t for t, _ in trickled), default=math.nan),
    }  # fmt: skip


def crash(model: Path, concurrency: int = 16, seconds: float = 25.0, kill_at_s: float = 5.0) -> dict[str, Any]:
    """SIGKILL under load at ``kill_at_s``, a new process on the same port; what the clients saw meanwhile."""
    with Service(model, **QUIET) as server, contextlib.ExitStack() as restarted:

        async def kill_and_restart() -> float:
            await asyncio.sleep(kill_at_s)
            server.process.kill()  # SIGKILL
            server.process.wait()
            running = await asyncio.to_thread(Service, model, server.port, **QUIET)
            restarted.callback(running.stop)
            return running.ready_s

        records, (ready_s,) = asyncio.run(_load(server, seconds, concurrency, 2, kill_and_restart()))
    seen = _count(records)
    not_503 = sum(n for status, n in seen.items() if status.startswith("5") and status != "503")
    return {"ready_after_kill_s": ready_s, "seconds": seconds, "kill_at_s": kill_at_s,
            "client_outcomes": seen, "server_errors_not_503": not_503}  # fmt: skip


def fuzz(model: Path, examples: int = 150) -> dict[str, Any]:
    """schemathesis over every operation, positive then negative cases, against the real app in process."""
    import schemathesis
    from hypothesis import HealthCheck, errors, given, settings
    from schemathesis import checks as check
    from schemathesis.python import asgi

    app = create_app(Settings(model_path=model, max_batch_delay_ms=2))
    schema, client = schemathesis.openapi.from_asgi("/openapi.json", app), asgi.get_client(app)
    while client.get("/readyz").status_code != 200:
        time.sleep(0.05)
    checks = [check.not_a_server_error, check.status_code_conformance, check.content_type_conformance,
              check.response_schema_conformance, check.negative_data_rejection]  # fmt: skip
    bounded = settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                       suppress_health_check=list(HealthCheck))  # fmt: skip
    tally: dict[str, Any] = dict.fromkeys(["requests", "server_errors", "nonconforming", "starting", "operations"], 0)
    tally["no_negative_data"], failures = [], []

    def judge(case: Any) -> None:
        response = case.call()
        tally["requests"] += 1
        tally["starting"] += response.status_code == 503
        if response.status_code != 503:
            tally["server_errors"] += response.status_code >= 500
            case.validate_response(response, checks=checks)

    for mode in schemathesis.GenerationMode:  # positive, then negative
        for operation in (result.ok() for result in schema.get_all_operations()):
            tally["operations"] += mode is schemathesis.GenerationMode.POSITIVE
            where = f"{operation.method.upper()} {operation.path}"
            try:
                bounded(given(case=operation.as_strategy(generation_mode=mode))(judge))()
            except errors.Unsatisfiable:  # nothing in the operation can be made invalid
                tally["no_negative_data"].append(where)
            except (Exception, BaseExceptionGroup) as exc:  # a check's failure, one per operation and kind
                failures.append(f"{where} ({mode.value}): {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    return tally | {"nonconforming": len(failures), "failures": sorted(failures)[:20]}


def _render_fuzz(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    header = ["generated requests", "server errors (5xx)", "answers outside the schema", "503 while warming up"]
    row = [f"{r['requests']:,}", *(str(r[key]) for key in ("server_errors", "nonconforming", "starting"))]
    lines = [f"schemathesis generates requests from the OpenAPI document for all {r['operations']} operations "
             "(`/v2` included), positive and negative, against the real app in process, and checks each answer: not "
             "a server error, a documented status, content type and body schema, negative data refused.", "",
             *table(header, [row]), ""]  # fmt: skip
    if r["no_negative_data"]:
        lines += [f"Nothing can be made invalid in {', '.join(r['no_negative_data'])}: fuzzed positively only.", ""]
    return lines + [f"- {failure}" for failure in r["failures"]] + ([""] if r["failures"] else [])


def _render_soak(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    rows = [[f"{r['requests']:,}", counts(r["statuses"]), str(r["server_errors"]), fmt(r["rss_mib_after_warmup"], 0),
             f"{fmt(r['rss_mib_end'], 0)} ({fmt(r['rss_mib_max'], 0)})", f"**{r['rss_growth_mib']:+.0f}**",
             fmt(r["p99_ms_first_window"], 0), fmt(r["p99_ms_last_window"], 0)]]  # fmt: skip
    header = ["requests", "answers", "5xx", "RSS after warm-up MiB", "RSS at the end (max)", "growth MiB",
              f"p99 first {r['window_s']:g} s, ms", f"p99 last {r['window_s']:g} s, ms"]  # fmt: skip
    return [f"{r['concurrency']} closed-loop clients for {r['seconds']:g} s after a {r['warm_up_s']:g} s warm-up. "
            "The mix: half multipart `/classify` (1, 2 or 4 files; attention none, grid or overlay; a fifth with class "
            "maps, a fifth with overlays over the whole image), 15 % JSON base64 `/classify`, 20 % `/v2` JSON infer, "
            "15 % `/v2` binary infer; images 16 to 1600 px as JPEG, PNG (L, RGBA), GIF and WebP; one request in ten a "
            "bad input (empty, not an image, truncated). An answer whose body is not what its status promises counts "
            "apart.", "", *table(header, rows), ""]  # fmt: skip


def _render_slow(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    slow = f"{counts(r['slow_outcomes'])}, the last after {r['slow_cut_off_after_s_max']:.1f} s"
    rows = [["alone", counts(r["statuses_alone"]), fmt(r["p99_ms_alone"], 0), ""],
            [f"beside {r['slow_connections']} slow", counts(r["statuses_beside_slow"]),
             fmt(r["p99_ms_beside_slow"], 0), slow]]  # fmt: skip
    return [f"{r['concurrency']} normal clients of the soak's mix for {r['seconds']:g} s alone, then "
            f"{r['seconds']:g} s beside {r['slow_connections']} connections that send their headers (a declared "
            f"100 kB body) and then one byte every 0.5 s; `CASTREAM_BODY_TIMEOUT_S={r['body_timeout_s']:g}`.", "",
            *table(["normal traffic", "answers", "p99 of the 200s, ms", "slow connections"], rows), "",
            f"p99 beside the slow connections / alone: **{r['p99_ratio']:.2f}**.", ""]  # fmt: skip


def _render_crash(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    return [f"Under the soak's load, the service is killed with SIGKILL after {r['kill_at_s']:g} s and a new process "
            f"started on the same port; the load runs {r['seconds']:g} s in all. Ready again "
            f"**{r['ready_after_kill_s']:.2f} s** after the kill; the clients saw {counts(r['client_outcomes'])}; 5xx "
            f"other than `503 starting`: **{r['server_errors_not_503']}**. The service writes no file: none can be "
            "left half-written.", ""]  # fmt: skip


def _aims_soak(r: dict[str, Any] | None) -> list[Aim]:
    ratio = None if r is None else r["p99_ms_last_window"] / r["p99_ms_first_window"]
    return [Aim("soak: 5xx answers", dig(r, "server_errors"), 0, False),
            Aim("soak: resident memory growth after warm-up", dig(r, "rss_growth_mib"), 50, False, " MiB"),
            Aim("soak: p99 of the last minute / of the first", ratio, 1.2, False)]  # fmt: skip


SECTIONS = (
    Section("fuzz", "Reliability: fuzzing every operation", fuzz, {"examples": 2}, _render_fuzz,
            lambda r: [Aim("fuzz: generated requests", dig(r, "requests"), 2000, True),
                       Aim("fuzz: server errors and answers outside the schema",
                           None if r is None else r["server_errors"] + r["nonconforming"], 0, False)]),
    Section("soak", "Reliability: a soak under mixed traffic", soak,
            {"soak_s": 3.0, "concurrency": 2, "warm_up_s": 1.0}, _render_soak, _aims_soak),
    Section("slow_clients", "Reliability: slow clients beside normal traffic", slow_clients,
            {"seconds": 2.0, "concurrency": 2, "slow": 2, "body_timeout_s": 1.0}, _render_slow,
            lambda r: [Aim("slow clients: normal traffic's p99 beside them / alone", dig(r, "p99_ratio"), 2, False)]),
    Section("crash", "Reliability: a crash under load, and the restart", crash,
            {"concurrency": 2, "seconds": 4.0, "kill_at_s": 1.0}, _render_crash,
            lambda r: [Aim("crash: ready again after SIGKILL", dig(r, "ready_after_kill_s"), 10, False, " s"),
                       Aim("crash: 5xx other than 503 starting", dig(r, "server_errors_not_503"), 0, False)]),
)  # fmt: skip
