"""What the report needs from benchmarks/load.py: a query string on requests, and the model's own latency."""

from __future__ import annotations

from benchmarks.load import LoadConfig, make_images, multipart_request, raw_throughput


def test_requests_carry_the_query_string() -> None:
    assert multipart_request(8000, b"jpeg").startswith(b"POST /classify HTTP/1.1\r\n")
    with_query = multipart_request(8000, b"jpeg", "attention=overlay")
    assert with_query.startswith(b"POST /classify?attention=overlay HTTP/1.1\r\n") and with_query.endswith(b"--\r\n")


def test_raw_measurement_includes_batch_one_latency(tiny_model) -> None:
    result = raw_throughput(LoadConfig(model=tiny_model, requests=16, seconds=5), make_images(4, 36))
    assert result["run_only"] > 0 and result["with_preprocessing"] > 0
    assert 0 < result["batch1_p50_ms"] <= result["batch1_p99_ms"]
