"""The benchmarks' shared harness: timing summaries and the requests of the load generator."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.harness import make_images, multipart_request, summarise


def test_summarise_reports_the_median() -> None:
    summary = summarise(np.array([0.03, 0.01, 0.02]), images=4)
    assert summary["rounds"] == 3 and summary["p50_ms"] == pytest.approx(20.0)
    assert summary["images_per_second"] == pytest.approx(200.0)
    assert 20.0 < summary["p99_ms"] <= 30.0


def test_requests_carry_the_query_string() -> None:
    assert multipart_request(8000, b"jpeg").startswith(b"POST /classify HTTP/1.1\r\n")
    with_query = multipart_request(8000, b"jpeg", "attention=overlay")
    assert with_query.startswith(b"POST /classify?attention=overlay HTTP/1.1\r\n") and with_query.endswith(b"--\r\n")


def test_generated_images_are_deterministic_jpegs() -> None:
    first, second = make_images(3, 40), make_images(3, 40)
    assert first == second and all(image.startswith(b"\xff\xd8") for image in first)
