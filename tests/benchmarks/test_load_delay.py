"""The batching-delay sweep: every delay and concurrency measured on a fresh service, with its mean batch size."""

from __future__ import annotations

from benchmarks.batch_delay import CONCURRENCIES, SECTIONS, sweep


def test_sweep_measures_each_delay_at_each_concurrency(tiny_model) -> None:
    result = sweep(tiny_model, [0, 30], seconds=1, rounds=1)
    assert set(result["delays_ms"]) == {"0", "30"}
    for by_concurrency in result["delays_ms"].values():
        assert set(by_concurrency) == {str(c) for c in CONCURRENCIES}
        for row in by_concurrency.values():
            assert row["throughput"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"] and row["mean_batch"] >= 1
    # A delay lets images from 32 clients gather; with none, a free model takes whatever is there.
    assert result["delays_ms"]["30"]["32"]["mean_batch"] > 1
    text = "\n".join(SECTIONS[0].render(result, {}))
    assert "| delay ms | concurrency |" in text and "| 30 | 32 |" in text
