"""Reliability: fuzzing, a soak under mixed traffic, slow clients, and a crash with restart. Loopback only.

- ``fuzz``: schemathesis over every OpenAPI operation (``/v2`` included), positive and negative cases, against
  the real app in process; counts 5xx and answers outside the schema.
- ``soak``: ``python -m service`` in a subprocess, ``--concurrency`` closed-loop clients for ``--soak-s``
  seconds after a warm-up: photo-like and synthetic images of many sizes and modes, 10 % bad inputs,
  overlays, class maps, /v2 JSON and binary. 5xx, resident memory after warm-up and at the end, p99 of the
  first and last minute.
- ``slow_clients``: normal traffic alone, then beside connections trickling their bodies.
- ``crash``: SIGKILL the service under load, restart it; the time until ready and what clients saw.

    python -m benchmarks soak --soak-s 600        # and fuzz, slow_clients, crash
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import signal
import statistics
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from benchmarks.harness import HOST, LoadConfig, Running, start_service, stop_service
from benchmarks.sections import Aim, Section, dig, fmt, table

QUIET = {"CASTREAM_LOG_LEVEL": "error"}  # one request in ten is bad on purpose: their warnings are expected


def _images(rng: random.Random) -> list[tuple[bytes, bool]]:
    """(file bytes, good) pairs: photo-like noise and flat images, many sizes, modes and formats; bad ones too."""
    out: list[tuple[bytes, bool]] = []
    nprng = np.random.default_rng(0)
    for size in (16, 64, 224, 500, 1024, 1600):
        for mode, kind in (("RGB", "JPEG"), ("L", "PNG"), ("RGBA", "PNG"), ("P", "GIF"), ("RGB", "WEBP")):
            w, h = size, max(8, int(size * rng.uniform(0.5, 1.5)))
            pixels = nprng.integers(0, 255, (h, w, 3), np.uint8)
            pixels = (pixels // 4 + np.linspace(0, 180, w, dtype=np.uint8)[None, :, None]).astype(np.uint8)
            image = Image.fromarray(pixels).convert(mode)
            buffer = io.BytesIO()
            image.save(buffer, format=kind)
            out.append((buffer.getvalue(), True))
    good = [d for d, _ in out]
    out += [(b"", False), (b"not an image", False), (good[3][: len(good[3]) // 2], False)]
    return out


def _request(rng: random.Random, images: list[tuple[bytes, bool]], model: str) -> dict:
    """One request of the mix, as httpx.request keyword arguments."""
    good = rng.random() >= 0.1  # one request in ten has a bad image
    data, _ = rng.choice([i for i in images if i[1] == good])
    kind = rng.random()
    if kind < 0.5:
        params = {"attention": rng.choice(["none", "grid", "overlay"]), "top_k": str(rng.randint(1, 5))}
        if rng.random() < 0.2:
            params["class_maps"] = "true"
        if rng.random() < 0.2:
            params["overlay_on"] = "image"
        files = [("file", ("x", data, "application/octet-stream")) for _ in range(rng.choice([1, 1, 1, 2, 4]))]
        return {"method": "POST", "url": "/classify", "params": params, "files": files}
    if kind < 0.65:
        return {"method": "POST", "url": "/classify", "json": {"images": [base64.b64encode(data).decode()]}}
    if kind < 0.85:
        tensor = {"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(data).decode()]}
        outputs = [{"name": "logits", "parameters": {"classification": 3}}]
        return {"method": "POST", "url": f"/v2/models/{model}/infer", "json": {"inputs": [tensor], "outputs": outputs}}
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image_bytes",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(data) + 4},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = header + len(data).to_bytes(4, "little") + data
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    return {"method": "POST", "url": f"/v2/models/{model}/infer", "content": body, "headers": headers}


async def _load(
    url: str, model: str, seconds: float, concurrency: int, seed: int = 0
) -> list[tuple[float, float, object]]:
    """Closed loop: (start offset s, latency s, status or exception name) per request."""
    images = _images(random.Random(seed))
    results: list[tuple[float, float, object]] = []
    begin = time.monotonic()

    async def client(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            while time.monotonic() - begin < seconds:
                start = time.monotonic()
                try:
                    response = await http.request(**_request(rng, images, model))
                    outcome: object = response.status_code if _whole(response) else "incomplete answer"
                except httpx.TransportError as exc:
                    outcome = type(exc).__name__
                    await asyncio.sleep(0.05)
                results.append((start - begin, time.monotonic() - start, outcome))

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return results


def _whole(response: httpx.Response) -> bool:
    """Whether an answer is what its status promises: a 200 carries predictions or outputs, an error its code."""
    body = response.content
    if "inference-header-content-length" in response.headers:  # /v2 binary: a JSON header, then the tensors
        body = body[: int(response.headers["inference-header-content-length"])]
    try:
        answer = json.loads(body)
    except ValueError:
        return False
    wanted = ("predictions", "outputs") if response.status_code == 200 else ("code", "error")  # /v2 errors: "error"
    return isinstance(answer, dict) and any(key in answer for key in wanted)


def _count(outcomes: Iterable[object]) -> dict[str, int]:
    """How many times each outcome (a status or an exception's name) occurred, in sorted order."""
    return dict(sorted(Counter(map(str, outcomes)).items()))


def _p99(results: list[tuple[float, float, object]]) -> float:
    """p99 in ms of the answers 200 among ``(start, latency, outcome)`` records."""
    latencies = [latency for _, latency, outcome in results if outcome == 200]
    return statistics.quantiles(latencies, n=100)[98] * 1000 if len(latencies) > 1 else float("nan")


def _server_errors(results: list[tuple[float, float, object]]) -> int:
    return sum(1 for _, _, outcome in results if str(outcome).startswith("5"))


def _model_name(server: Running) -> str:
    return httpx.get(f"{server.url}/v1/model", timeout=10).json()["name"]


def soak(model: Path, seconds: float, concurrency: int, warm_up_s: float = 30.0) -> dict[str, Any]:
    """``concurrency`` clients of the mix for ``seconds`` after ``warm_up_s``; memory sampled every 5 s."""
    server = start_service(LoadConfig(model=model), **QUIET)
    try:
        name = _model_name(server)
        asyncio.run(_load(server.url, name, warm_up_s, concurrency, seed=1))
        rss_start, samples = server.rss_mib(), []

        async def sampled() -> list[tuple[float, float, object]]:
            async def sample() -> None:
                while True:
                    samples.append(server.rss_mib())
                    await asyncio.sleep(5)

            sampler = asyncio.create_task(sample())
            try:
                return await _load(server.url, name, seconds, concurrency)
            finally:
                sampler.cancel()

        results = asyncio.run(sampled())
        rss_end = server.rss_mib()
    finally:
        stop_service(server.process)
    window = min(60.0, seconds / 3)
    return {
        "seconds": seconds, "warm_up_s": warm_up_s, "concurrency": concurrency, "requests": len(results),
        "statuses": _count(outcome for _, _, outcome in results), "server_errors": _server_errors(results),
        "rss_mib_after_warmup": rss_start, "rss_mib_end": rss_end, "rss_mib_max": max(samples, default=rss_end),
        "rss_growth_mib": rss_end - rss_start, "window_s": window,
        "p99_ms_first_window": _p99([r for r in results if r[0] < window]),
        "p99_ms_last_window": _p99([r for r in results if r[0] >= seconds - window]),
    }  # fmt: skip


async def _trickle(port: int, timeout_s: float) -> tuple[str, float]:
    """One slow client: headers, then a byte of its declared 100 kB body every 0.5 s until answered."""
    begin = time.monotonic()
    reader, writer = await asyncio.open_connection(HOST, port)
    head = "POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    writer.write(head.encode())
    status = "no answer"
    try:
        while time.monotonic() - begin < timeout_s * 3:
            writer.write(b" ")
            await writer.drain()
            try:
                line = await asyncio.wait_for(reader.readline(), 0.5)
            except TimeoutError:
                continue
            status = line.split()[1].decode() if line else "closed"
            break
    except (ConnectionError, OSError) as exc:
        status = type(exc).__name__
    writer.close()
    return status, time.monotonic() - begin


def slow_clients(model: Path, seconds: float, concurrency: int, slow: int, body_timeout_s: float) -> dict[str, Any]:
    """Normal traffic alone, then beside ``slow`` connections trickling their bodies."""
    server = start_service(LoadConfig(model=model), CASTREAM_BODY_TIMEOUT_S=str(body_timeout_s), **QUIET)
    try:
        name = _model_name(server)
        asyncio.run(_load(server.url, name, min(10.0, seconds), concurrency, seed=3))  # warm-up
        alone = asyncio.run(_load(server.url, name, seconds, concurrency, seed=4))

        async def beside() -> tuple[list, list]:
            trickles = [asyncio.create_task(_trickle(server.port, body_timeout_s)) for _ in range(slow)]
            normal = await _load(server.url, name, seconds, concurrency, seed=4)
            return normal, await asyncio.gather(*trickles)

        together, trickled = asyncio.run(beside())
    finally:
        stop_service(server.process)
    return {
        "seconds": seconds, "concurrency": concurrency, "slow_connections": slow, "body_timeout_s": body_timeout_s,
        "statuses_alone": _count(outcome for _, _, outcome in alone),
        "statuses_beside_slow": _count(outcome for _, _, outcome in together),
        "p99_ms_alone": _p99(alone), "p99_ms_beside_slow": _p99(together),
        "p99_ratio": _p99(together) / _p99(alone), "slow_outcomes": _count(status for status, _ in trickled),
        "slow_cut_off_after_s_max": max((t for _, t in trickled), default=float("nan")),
    }  # fmt: skip


def crash(model: Path, concurrency: int, seconds: float = 25.0, kill_at_s: float = 5.0) -> dict[str, Any]:
    """SIGKILL under load at ``kill_at_s``, a new process on the same port; what the clients saw meanwhile."""
    config = LoadConfig(model=model)
    server = start_service(config, **QUIET)
    outcome: dict[str, Any] = {}

    async def scenario() -> list:
        load = asyncio.create_task(_load(server.url, _model_name(server), seconds, concurrency, seed=2))
        await asyncio.sleep(kill_at_s)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        restarted = outcome["restarted"] = await asyncio.to_thread(start_service, config, server.port, **QUIET)
        outcome["ready_after_kill_s"] = restarted.ready_s
        return await load

    try:
        results = asyncio.run(scenario())
    finally:
        stop_service(server.process)
        if "restarted" in outcome:
            stop_service(outcome.pop("restarted").process)
    seen = _count(outcome for _, _, outcome in results)
    outcome |= {"seconds": seconds, "kill_at_s": kill_at_s, "client_outcomes": seen}
    outcome["server_errors_not_503"] = sum(n for s, n in seen.items() if s.startswith("5") and s != "503")
    return outcome


def fuzz(model: Path, examples: int) -> dict:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import (
        content_type_conformance,
        negative_data_rejection,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )
    from schemathesis.generation import GenerationMode
    from schemathesis.python import asgi

    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(model_path=model, max_batch_delay_ms=2))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    client = asgi.get_client(app)
    while client.get("/readyz").status_code != 200:
        time.sleep(0.05)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        negative_data_rejection,
    ]
    bounded = settings(
        max_examples=examples, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
    )
    counts = {
        "requests": 0,
        "server_errors": 0,
        "nonconforming": 0,
        "starting": 0,
        "operations": 0,
        "no_negative_data": [],
    }
    failures: list[str] = []
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        for result in schema.get_all_operations():
            operation = result.ok()
            counts["operations"] += mode is GenerationMode.POSITIVE

            where = f"{operation.method.upper()} {operation.path}"

            def judge(case, where: str = where) -> None:
                response = case.call()
                counts["requests"] += 1
                if response.status_code == 503:
                    counts["starting"] += 1
                    return
                counts["server_errors"] += response.status_code >= 500
                case.validate_response(response, checks=checks)

            run = bounded(given(case=operation.as_strategy(generation_mode=mode))(lambda case: judge(case)))
            try:
                run()
            except BaseException as exc:  # a check hypothesis reports, or no negative data for this operation
                if isinstance(exc, KeyboardInterrupt):
                    raise
                if type(exc).__name__ == "Unsatisfiable":  # nothing in the operation can be made invalid
                    counts["no_negative_data"].append(where)
                    continue
                counts["nonconforming"] += 1
                failures.append(f"{where} ({mode.value}): {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    counts["failures"] = sorted(set(failures))[:20]
    return counts


def _render_fuzz(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    rows = [[f"{r['requests']:,}", str(r["server_errors"]), str(r["nonconforming"]), str(r["starting"])]]
    lines = [
        f"schemathesis generates requests from the OpenAPI document for all {r['operations']} operations (`/v2` "
        "included), positive and negative, against the real app in process, and checks each answer: not a server "
        "error, a documented status, content type and body schema, negative data refused.",
        "",
        *table(
            ["generated requests", "server errors (5xx)", "answers outside the schema", "503 while warming up"], rows
        ),
        "",
    ]
    if r["no_negative_data"]:
        lines += [f"Nothing can be made invalid in {', '.join(r['no_negative_data'])}: fuzzed positively only.", ""]
    return lines + [f"- {failure}" for failure in r["failures"]] + ([""] if r["failures"] else [])


def _render_soak(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    statuses = ", ".join(f"{status}: {count:,}" for status, count in r["statuses"].items())
    rows = [[f"{r['requests']:,}", statuses, str(r["server_errors"]), fmt(r["rss_mib_after_warmup"], 0),
             f"{fmt(r['rss_mib_end'], 0)} ({fmt(r['rss_mib_max'], 0)})", f"**{r['rss_growth_mib']:+.0f}**",
             fmt(r["p99_ms_first_window"], 0), fmt(r["p99_ms_last_window"], 0)]]  # fmt: skip
    header = ["requests", "answers", "5xx", "RSS after warm-up MiB", "RSS at the end (max)", "growth MiB",
              f"p99 first {r['window_s']:g} s, ms", f"p99 last {r['window_s']:g} s, ms"]  # fmt: skip
    return [
        f"{r['concurrency']} closed-loop clients for {r['seconds']:g} s after a {r['warm_up_s']:g} s warm-up. The mix: "
        "half multipart `/classify` (1, 2 or 4 files; attention none, grid or overlay; a fifth with class maps, a "
        "fifth with overlays over the whole image), 15 % JSON base64 `/classify`, 20 % `/v2` JSON infer, 15 % `/v2` "
        "binary infer; images 16 to 1600 px as JPEG, PNG (L, RGBA), GIF and WebP; one request in ten a bad input "
        "(empty, not an image, truncated). An answer whose body is not what its status promises counts apart.",
        "",
        *table(header, rows),
        "",
    ]


def _render_slow(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    def answers(statuses: dict[str, int]) -> str:
        return ", ".join(f"{status}: {count:,}" for status, count in statuses.items())

    rows = [["alone", answers(r["statuses_alone"]), fmt(r["p99_ms_alone"], 0), ""],
            [f"beside {r['slow_connections']} slow", answers(r["statuses_beside_slow"]),
             fmt(r["p99_ms_beside_slow"], 0),
             f"{answers(r['slow_outcomes'])}, the last after {r['slow_cut_off_after_s_max']:.1f} s"]]  # fmt: skip
    return [
        f"{r['concurrency']} normal clients of the soak's mix for {r['seconds']:g} s alone, then {r['seconds']:g} s "
        f"beside {r['slow_connections']} connections that send their headers (a declared 100 kB body) and then one "
        f"byte every 0.5 s; `CASTREAM_BODY_TIMEOUT_S={r['body_timeout_s']:g}`.",
        "",
        *table(["normal traffic", "answers", "p99 of the 200s, ms", "slow connections"], rows),
        "",
        f"p99 beside the slow connections / alone: **{r['p99_ratio']:.2f}**.",
        "",
    ]


def _render_crash(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    outcomes = ", ".join(f"{status}: {count:,}" for status, count in r["client_outcomes"].items())
    return [
        f"Under the soak's load, the service is killed with SIGKILL after {r['kill_at_s']:g} s and a new process "
        f"started on the same port; the load runs {r['seconds']:g} s in all. Ready again "
        f"**{r['ready_after_kill_s']:.2f} s** after the kill; the clients saw {outcomes}; 5xx other than "
        f"`503 starting`: **{r['server_errors_not_503']}**. The service writes no file: none can be left half-written.",
        "",
    ]


def _aims_soak(r: dict[str, Any] | None) -> list[Aim]:
    first, last = dig(r, "p99_ms_first_window"), dig(r, "p99_ms_last_window")
    return [
        Aim("soak: 5xx answers", dig(r, "server_errors"), 0, False),
        Aim("soak: resident memory growth after warm-up", dig(r, "rss_growth_mib"), 50, False, " MiB"),
        Aim("soak: p99 of the last minute / of the first", None if r is None else last / first, 1.2, False),
    ]


SECTIONS = (
    Section(
        "fuzz",
        "Reliability: fuzzing every operation",
        full={"examples": 150},
        quick={"examples": 2},
        run=lambda context: fuzz(context.model, context.budget["examples"]),
        render=_render_fuzz,
        aims=lambda r: [
            Aim("fuzz: generated requests", dig(r, "requests"), 2000, True),
            Aim(
                "fuzz: server errors and answers outside the schema",
                None if r is None else r["server_errors"] + r["nonconforming"],
                0,
                False,
            ),
        ],  # fmt: skip
    ),
    Section(
        "soak",
        "Reliability: a soak under mixed traffic",
        full={"soak_s": 600.0, "concurrency": 16, "warm_up_s": 30.0},
        quick={"soak_s": 3.0, "concurrency": 2, "warm_up_s": 1.0},
        run=lambda context: soak(
            context.model, context.budget["soak_s"], context.budget["concurrency"], context.budget["warm_up_s"]
        ),  # fmt: skip
        render=_render_soak,
        aims=_aims_soak,
    ),
    Section(
        "slow_clients",
        "Reliability: slow clients beside normal traffic",
        full={"seconds": 30.0, "concurrency": 16, "slow": 50, "body_timeout_s": 10.0},
        quick={"seconds": 2.0, "concurrency": 2, "slow": 2, "body_timeout_s": 1.0},
        run=lambda context: slow_clients(context.model, **context.budget),
        render=_render_slow,
        aims=lambda r: [Aim("slow clients: normal traffic's p99 beside them / alone", dig(r, "p99_ratio"), 2, False)],
    ),
    Section(
        "crash",
        "Reliability: a crash under load, and the restart",
        full={"concurrency": 16, "seconds": 25.0, "kill_at_s": 5.0},
        quick={"concurrency": 2, "seconds": 4.0, "kill_at_s": 1.0},
        run=lambda context: crash(context.model, **context.budget),
        render=_render_crash,
        aims=lambda r: [
            Aim("crash: ready again after SIGKILL", dig(r, "ready_after_kill_s"), 10, False, " s"),
            Aim("crash: 5xx other than 503 starting", dig(r, "server_errors_not_503"), 0, False),
        ],  # fmt: skip
    ),
)
