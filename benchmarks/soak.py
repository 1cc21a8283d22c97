"""Reliability figures: fuzzing, a soak under mixed traffic, and a crash with restart. Loopback only.

``python -m benchmarks.soak [--soak-s 180] [--concurrency 16] [--fuzz-examples 150] [--phases fuzz,soak,crash]``

- fuzz: schemathesis over every OpenAPI operation (``/v2`` included), positive and negative cases, against
  the real app in process; counts 5xx and answers outside the schema.
- soak: ``python -m service`` in a subprocess, ``--concurrency`` closed-loop clients for ``--soak-s`` seconds:
  photo-like and synthetic images of many sizes and modes, 10 % bad inputs, overlays, class maps, /v2 JSON
  and binary. Reports 5xx, resident memory after warm-up and at the end, and p99 of the first and last minute.
- crash: SIGKILL the service under load, restart it; reports the time until ready again and what clients saw.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from benchmarks.harness import free_port, rss_mib

REPO = Path(__file__).resolve().parents[1]


def _images(rng: random.Random) -> list[tuple[bytes, bool]]:
    """(file bytes, good) pairs: photo-like noise and flat images, many sizes, modes and formats; bad ones too."""
    out: list[tuple[bytes, bool]] = []
    nprng = np.random.default_rng(0)
    for size in (16, 64, 224, 500, 1024, 1600):
        for mode, fmt in (("RGB", "JPEG"), ("L", "PNG"), ("RGBA", "PNG"), ("P", "GIF"), ("RGB", "WEBP")):
            w, h = size, max(8, int(size * rng.uniform(0.5, 1.5)))
            pixels = nprng.integers(0, 255, (h, w, 3), np.uint8)
            pixels = (pixels // 4 + np.linspace(0, 180, w, dtype=np.uint8)[None, :, None]).astype(np.uint8)
            image = Image.fromarray(pixels).convert(mode)
            buffer = io.BytesIO()
            image.save(buffer, format=fmt)
            out.append((buffer.getvalue(), True))
    good = [d for d, _ in out]
    out += [(b"", False), (b"not an image", False), (good[3][: len(good[3]) // 2], False)]
    return out


class Server:
    def __init__(self, model: Path, port: int, **extra: str):
        self.url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            **extra,
            "CASTREAM_MODEL_PATH": str(model),
            "CASTREAM_HOST": "127.0.0.1",
            "CASTREAM_PORT": str(port),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def wait_ready(self, timeout: float = 120) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the service never became ready")

    def rss_mib(self) -> float:
        return rss_mib(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


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
                    outcome: object = response.status_code
                except httpx.TransportError as exc:
                    outcome = type(exc).__name__
                    await asyncio.sleep(0.05)
                results.append((start - begin, time.monotonic() - start, outcome))

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return results


def _count(results: list[tuple[float, float, object]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, _, outcome in results:
        counts[str(outcome)] = counts.get(str(outcome), 0) + 1
    return dict(sorted(counts.items()))


def _p99(latencies: list[float]) -> float:
    return statistics.quantiles(latencies, n=100)[98] * 1000 if len(latencies) > 1 else float("nan")


def soak(model: Path, seconds: float, concurrency: int) -> dict:
    server = Server(model, free_port())
    try:
        server.wait_ready()
        name = httpx.get(f"{server.url}/v1/model").json()["name"]
        asyncio.run(_load(server.url, name, min(20.0, seconds / 6), concurrency, seed=1))  # warm-up
        rss_start = server.rss_mib()
        samples: list[float] = []

        async def sample() -> None:
            while True:
                samples.append(server.rss_mib())
                await asyncio.sleep(5)

        async def both() -> list:
            sampler = asyncio.create_task(sample())
            try:
                return await _load(server.url, name, seconds, concurrency)
            finally:
                sampler.cancel()

        results = asyncio.run(both())
        rss_end = server.rss_mib()
    finally:
        server.stop()
    statuses: dict[str, int] = {}
    for _, _, outcome in results:
        statuses[str(outcome)] = statuses.get(str(outcome), 0) + 1
    window = min(60.0, seconds / 3)
    first = [lat for start, lat, outcome in results if start < window and outcome == 200]
    last = [lat for start, lat, outcome in results if start >= seconds - window and outcome == 200]
    return {
        "seconds": seconds,
        "concurrency": concurrency,
        "requests": len(results),
        "statuses": dict(sorted(statuses.items())),
        "server_errors": sum(n for s, n in statuses.items() if s.startswith("5")),
        "rss_mib_after_warmup": round(rss_start, 1),
        "rss_mib_end": round(rss_end, 1),
        "rss_mib_max": round(max(samples, default=rss_end), 1),
        "window_s": window,
        "p99_ms_first_window": round(_p99(first), 1),
        "p99_ms_last_window": round(_p99(last), 1),
    }


async def _trickle(port: int, timeout_s: float) -> tuple[str, float]:
    """One slow client: headers, then a byte of its declared 100 kB body every 0.5 s until answered."""
    begin = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
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


def slow_clients(model: Path, seconds: float, concurrency: int, slow: int, timeout_s: float) -> dict:
    """Normal traffic's p99 alone, then beside ``slow`` connections trickling their bodies."""
    server = Server(model, free_port(), CASTREAM_BODY_TIMEOUT_S=str(timeout_s))
    port = int(server.url.rsplit(":", 1)[1])
    try:
        server.wait_ready()
        name = httpx.get(f"{server.url}/v1/model").json()["name"]
        asyncio.run(_load(server.url, name, 10, concurrency, seed=3))  # warm-up
        alone = asyncio.run(_load(server.url, name, seconds, concurrency, seed=4))

        async def beside() -> tuple[list, list]:
            trickles = [asyncio.create_task(_trickle(port, timeout_s)) for _ in range(slow)]
            normal = await _load(server.url, name, seconds, concurrency, seed=4)
            return normal, await asyncio.gather(*trickles)

        together, trickled = asyncio.run(beside())
    finally:
        server.stop()
    ok_alone = [lat for _, lat, outcome in alone if outcome == 200]
    ok_together = [lat for _, lat, outcome in together if outcome == 200]
    slow_statuses: dict[str, int] = {}
    for status, _ in trickled:
        slow_statuses[status] = slow_statuses.get(status, 0) + 1
    return {
        "seconds": seconds,
        "concurrency": concurrency,
        "slow_connections": slow,
        "body_timeout_s": timeout_s,
        "normal_requests_alone": len(alone),
        "normal_requests_beside_slow": len(together),
        "normal_5xx_beside_slow": sum(1 for _, _, o in together if str(o).startswith("5")),
        "normal_statuses_alone": _count(alone),
        "normal_statuses_beside_slow": _count(together),
        "p99_ms_alone": round(_p99(ok_alone), 1),
        "p99_ms_beside_slow": round(_p99(ok_together), 1),
        "slow_outcomes": slow_statuses,
        "slow_cut_off_after_s_max": round(max(t for _, t in trickled), 2),
    }


def crash(model: Path, concurrency: int) -> dict:
    port = free_port()
    server = Server(model, port)
    server.wait_ready()
    name = httpx.get(f"{server.url}/v1/model").json()["name"]
    outcome: dict = {}

    async def scenario() -> list:
        load = asyncio.create_task(_load(server.url, name, 25, concurrency, seed=2))
        await asyncio.sleep(5)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        killed = time.monotonic()
        restarted = Server(model, port)
        outcome["restarted"] = restarted
        await asyncio.to_thread(restarted.wait_ready)
        outcome["ready_after_kill_s"] = round(time.monotonic() - killed, 2)
        return await load

    try:
        results = asyncio.run(scenario())
    finally:
        server.stop()
        if "restarted" in outcome:
            outcome.pop("restarted").stop()
    seen: dict[str, int] = {}
    for _, _, result in results:
        seen[str(result)] = seen.get(str(result), 0) + 1
    outcome["client_outcomes"] = dict(sorted(seen.items()))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/castream.onnx"))
    parser.add_argument("--soak-s", type=float, default=600.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--fuzz-examples", type=int, default=150, help="per operation and mode")
    parser.add_argument("--slow-s", type=float, default=30.0, help="each half of the slow-client phase")
    parser.add_argument("--slow-clients", type=int, default=50)
    parser.add_argument("--body-timeout-s", type=float, default=10.0)
    parser.add_argument("--phases", default="fuzz,soak,slow,crash")
    args = parser.parse_args()
    phases = args.phases.split(",")
    report: dict = {}
    if "fuzz" in phases:
        report["fuzz"] = fuzz(args.model, args.fuzz_examples)
        print(json.dumps({"fuzz": report["fuzz"]}), flush=True)
    if "soak" in phases:
        report["soak"] = soak(args.model, args.soak_s, args.concurrency)
        print(json.dumps({"soak": report["soak"]}), flush=True)
    if "slow" in phases:
        report["slow"] = slow_clients(args.model, args.slow_s, args.concurrency, args.slow_clients, args.body_timeout_s)
        print(json.dumps({"slow": report["slow"]}), flush=True)
    if "crash" in phases:
        report["crash"] = crash(args.model, args.concurrency)
        print(json.dumps({"crash": report["crash"]}), flush=True)


if __name__ == "__main__":
    main()
