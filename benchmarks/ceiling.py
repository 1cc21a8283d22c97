"""The service's own ceiling: ``python -m service`` on a null model (the served model's input, outputs and metadata,
next to no compute), driven by ``wrk`` on loopback, so that what is left is the service's own work per request.
``ceiling``: requests per second at several concurrencies, the service's CPU seconds per request (every process of
the service, ``wrk`` excluded), where a request's time goes by the service's histograms, and one serving process
against two (``CASTREAM_WORKERS``)."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.nullmodel import save_null_model
from benchmarks.sections import Aim, Section, body, counts, dig, fmt, table
from benchmarks.serving import STAGE_NOTES, stage_means, watched

log = logging.getLogger(__name__)

CPU_AIM_MS = 1.0  # the service's CPU per request on the null model
WORKERS_AIM = 1.6  # two serving processes over one, requests/s
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user and system) of process ``pid`` and of the children it has waited for; 0 once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": fields 3 on of proc(5)
    return sum(int(v) for v in fields[11:15]) / TICKS  # utime, stime, cutime, cstime


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by process ``pid`` and every process under it, live or exited and waited for."""
    return sum(cpu_seconds(p) for p in harness.process_tree(pid))


def _phase(server: harness.Service, bodies: list[Path], concurrency: int, requests: int, seconds: float) -> dict:
    """One closed-loop ``wrk`` phase: what the client saw, the service's CPU per answer and its stage means."""
    cpu = tree_cpu_seconds(server.process.pid)
    phase, delta = watched(server, bodies, concurrency, requests, seconds)
    used = tree_cpu_seconds(server.process.pid) - cpu
    return {"requests": phase.requests, "statuses": phase.statuses, "requests_per_second": phase.throughput,
            "p50_ms": phase.p50_ms, "p99_ms": phase.p99_ms, "cpu_ms_per_request": used / phase.requests * 1000,
            "cpu_cores": used / phase.seconds, "stages_ms": stage_means(delta, "grid")}  # fmt: skip


def ceiling(
    model: Path, seconds: float = 10.0, requests: int = 10**6, concurrencies: Sequence[int] = (1, 8, 32),
    workers_concurrency: int = 8, rounds: int = 2, size: int = 128, images: int = 16,
) -> dict[str, Any]:  # fmt: skip
    """``size`` x ``size`` JPEGs as JSON to ``POST /classify?top_k=1`` on ``model``'s null model: each concurrency
    on one service, then one serving process against two at ``workers_concurrency``, a fresh service each, in
    alternating order over ``rounds`` rounds (averaged); each phase bounded by ``requests`` and ``seconds``."""
    pictures = harness.make_images(images, size, width=size)
    with tempfile.TemporaryDirectory() as folder, harness.request_bodies(pictures) as bodies:
        null = save_null_model(model, Path(folder) / "null.onnx")
        with harness.Service(null) as server:
            harness.wrk_phase(server.port, bodies, max(concurrencies), requests, min(2.0, seconds))  # warm-up
            levels = {}
            for c in concurrencies:
                log.info("ceiling: concurrency %d", c)
                levels[str(c)] = _phase(server, bodies, c, requests, seconds)

        def measure(server: harness.Service, workers: int) -> dict[str, float]:
            harness.wrk_phase(server.port, bodies, workers_concurrency, requests, min(2.0, seconds))  # warm-up
            log.info("ceiling: %d serving process(es) at concurrency %d", workers, workers_concurrency)
            cpu = tree_cpu_seconds(server.process.pid)
            phase = harness.wrk_phase(server.port, bodies, workers_concurrency, requests, seconds)
            used = tree_cpu_seconds(server.process.pid) - cpu
            return {"requests_per_second": phase.throughput, "p50_ms": phase.p50_ms, "p99_ms": phase.p99_ms,
                    "cpu_ms_per_request": used / max(1, phase.requests) * 1000, "cpu_cores": used / phase.seconds,
                    "ok_share": phase.statuses.get("200", 0) / max(1, phase.requests),
                    "processes": float(server.processes())}  # fmt: skip

        by_workers = harness.fresh_services(null, "CASTREAM_WORKERS", (1, 2), rounds, measure)
    one, two = by_workers[1], by_workers[2]
    return {"size": size, "images": images, "seconds": seconds, "rounds": rounds, "levels": levels,
            "workers": {"concurrency": workers_concurrency, "1": one, "2": two,
                        "ratio": two["requests_per_second"] / one["requests_per_second"]},
            "cpu_ms_per_request": max(level["cpu_ms_per_request"] for level in levels.values())}  # fmt: skip


def _aims(r: dict[str, Any] | None) -> list[Aim]:
    c = dig(r, "workers", "concurrency") or 8
    return [
        Aim("service CPU per request on a null model, the most over the concurrencies", dig(r, "cpu_ms_per_request"),
            CPU_AIM_MS, False, " ms"),
        Aim(f"2 serving processes / 1, requests/s at concurrency {c} (null model)", dig(r, "workers", "ratio"),
            WORKERS_AIM, True),
    ]  # fmt: skip


def _render(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    levels, workers = r["levels"], r["workers"]
    rows = [[c, fmt(level["requests_per_second"]), fmt(level["p50_ms"], 2), fmt(level["p99_ms"], 2),
             f"**{fmt(level['cpu_ms_per_request'], 3)}**", fmt(level["cpu_cores"], 2), counts(level["statuses"])]
            for c, level in levels.items()]  # fmt: skip
    stages = [[f"{stage}: {note}", *(fmt(level["stages_ms"][stage], 3) for level in levels.values())]
              for stage, note in STAGE_NOTES.items()]  # fmt: skip
    w = workers["concurrency"]
    process = [[n, f"{workers[n]['processes']:.0f}", fmt(workers[n]["requests_per_second"]),
                fmt(workers[n]["p50_ms"], 2), fmt(workers[n]["cpu_ms_per_request"], 3), fmt(workers[n]["cpu_cores"], 2)]
               for n in ("1", "2")]  # fmt: skip
    cores = results.get("machine", {}).get("usable_cores", "?")
    return body(
        f"`python -m service` on a null model: the served model's input, outputs and metadata around a graph that "
        f"reads one pixel (`benchmarks/nullmodel.py`), so that what remains is the service's own work. The same "
        f"{r['images']} JPEGs ({r['size']}x{r['size']}), each request one image as JSON base64 to "
        f"`POST /classify?top_k=1`, from `wrk` on loopback, {r['seconds']:g} s per phase. CPU is the service's "
        "(`/proc/<pid>/stat` user and system time of its processes, `wrk` excluded) over the requests answered.",
        table(
            ["concurrency", "requests/s", "p50 ms", "p99 ms", "service CPU ms / request", "cores busy", "answers"], rows
        ),
        "Mean milliseconds per request of each stage, from the service's histograms (`_sum` / `_count` before and "
        "after each phase):",
        table(["stage (ms per request)", *(f"concurrency {c}" for c in levels)], stages),
        f"One serving process against two (`CASTREAM_WORKERS`), at concurrency {w}, a fresh service each, "
        f"{r['rounds']} round(s) in alternating order, averaged, on {cores} cores shared with `wrk`: two / one = "
        f"**{workers['ratio']:.2f}**.",
        table(
            ["`CASTREAM_WORKERS`", "processes", "requests/s", "p50 ms", "service CPU ms / request", "cores busy"],
            process,
        ),
    )


SECTIONS = (
    Section("ceiling", "The service's own ceiling, on a null model", ceiling, {"seconds": 1.0, "rounds": 1}, _render,
            _aims),
)  # fmt: skip
