"""The reliability sections, their quick budgets on the tiny model: each runs the real service and reports what
the clients saw; the timeline and the tracing cost run the real app in process."""

from __future__ import annotations

from pathlib import Path

from benchmarks.report import SECTIONS, Options, aims, render, run


def _quick(model: Path, *names: str) -> dict:
    results = run(Options(model, None, names, quick=True))
    for name in names:
        assert "result" in results["sections"][name], results["sections"][name]
    return results


def test_soak_slow_clients_and_crash_report_what_clients_saw(tiny_model: Path) -> None:
    results = _quick(tiny_model, "soak", "slow_clients", "crash")
    soak = results["sections"]["soak"]["result"]
    assert soak["requests"] > 0 and soak["server_errors"] == 0 and "incomplete answer" not in soak["statuses"]
    assert soak["statuses"].get("200", 0) > 0 and any(s.startswith("4") for s in soak["statuses"])  # bad inputs too
    assert soak["rss_mib_after_warmup"] > 0
    assert soak["rss_growth_mib"] == soak["rss_mib_end"] - soak["rss_mib_after_warmup"]
    slow = results["sections"]["slow_clients"]["result"]
    assert slow["slow_outcomes"] == {"408": 2}  # both cut off by the one-second body timeout
    assert slow["statuses_beside_slow"].get("200", 0) > 0 and slow["p99_ratio"] > 0
    crash = results["sections"]["crash"]["result"]
    assert 0 < crash["ready_after_kill_s"] < 60 and crash["server_errors_not_503"] == 0
    assert crash["client_outcomes"].get("200", 0) > 0
    text = render(results, None)
    assert "Ready again **" in text and "p99 beside the slow connections / alone: **" in text
    verdicts = {aim.figure: aim.met for aim in aims(results)}
    assert verdicts["soak: 5xx answers"] is True and verdicts["crash: 5xx other than 503 starting"] is True


def test_fuzzing_counts_requests_and_finds_nothing(tiny_model: Path) -> None:
    fuzz = _quick(tiny_model, "fuzz")["sections"]["fuzz"]["result"]
    assert fuzz["operations"] >= 10 and fuzz["requests"] >= fuzz["operations"]
    assert fuzz["server_errors"] == 0 and fuzz["nonconforming"] == 0, fuzz["failures"]


def test_timeline_and_tracing_cost_run_the_app_in_process(tiny_model: Path) -> None:
    from service import middleware

    before = middleware.MetricsMiddleware.__call__
    results = _quick(tiny_model, "timeline", "tracing_cost")
    assert middleware.MetricsMiddleware.__call__ is before  # the timeline's instrumentation is undone
    timeline = results["sections"]["timeline"]["result"]
    assert timeline["requests"] > 0 and all(ms >= 0 for ms in timeline["stages_ms"].values())
    assert sum(timeline["stages_ms"].values()) <= timeline["client_p50_ms"] * 2
    tracing = results["sections"]["tracing_cost"]["result"]
    assert tracing["requests"] == 4 and tracing["on"]["median_ms"] > 0 and tracing["off"]["median_ms"] > 0
    assert "Tracing on costs **" in render(results, None)
    assert {section.name for section in SECTIONS} >= {"fuzz", "soak", "slow_clients", "crash", "timeline"}
