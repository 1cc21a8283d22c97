"""The benchmarks' shared harness: timing summaries, inputs, and wrk's phases against the real service."""

from __future__ import annotations

import io
import json
import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from benchmarks.harness import (
    BOUNDARY,
    HOST,
    MULTIPART,
    Service,
    get,
    make_images,
    multipart_body,
    photo,
    process_tree,
    request_bodies,
    summarise,
    wrk_phase,
)


def test_summarise_reports_the_median() -> None:
    summary = summarise(np.array([0.03, 0.01, 0.02]), images=4)
    assert summary["rounds"] == 3 and summary["p50_ms"] == pytest.approx(20.0)
    assert summary["images_per_second"] == pytest.approx(200.0)
    assert 20.0 < summary["p99_ms"] <= 30.0


def test_generated_images_are_deterministic_jpegs() -> None:
    first, second = make_images(3, 40), make_images(3, 40)
    assert first == second and all(image.startswith(b"\xff\xd8") for image in first)
    assert {Image.open(io.BytesIO(data)).size for data in make_images(3, 30, width=45)} == {(45, 30)}


def test_photos_take_a_grain_a_quality_and_a_format() -> None:
    grainy, light = photo(96, 64, seed=3), photo(96, 64, seed=3, grain=1.5, quality=85)
    assert grainy == photo(96, 64, seed=3) and len(light) < len(grainy)
    png = photo(96, 64, kind="PNG")
    assert png.startswith(b"\x89PNG") and Image.open(io.BytesIO(png)).size == (96, 64)


def test_request_bodies_are_json_base64_files_removed_afterwards() -> None:
    with request_bodies(make_images(2, 40)) as bodies:
        assert len(bodies) == 2 and all(json.loads(path.read_bytes())["images"][0] for path in bodies)
    assert not any(path.exists() for path in bodies)


def test_multipart_bodies_carry_one_file_field_with_its_image_type() -> None:
    image = photo(40, 30, kind="PNG")
    form = multipart_body(image)
    assert MULTIPART.endswith(f"boundary={BOUNDARY}") and form.endswith(f"\r\n--{BOUNDARY}--\r\n".encode())
    head, rest = form.split(b"\r\n\r\n", 1)
    assert b'name="file"; filename="photo.png"' in head and b"Content-Type: image/png" in head
    assert rest.startswith(image)
    with request_bodies([image], MULTIPART) as bodies:
        assert bodies[0].read_bytes() == form
    with pytest.raises(ValueError, match="boundary"):
        multipart_body(image + BOUNDARY.encode())


def test_process_tree_lists_a_process_and_its_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        tree = process_tree(os.getpid())
        assert tree[0] == os.getpid() and child.pid in tree
    finally:
        child.kill()
        child.wait()
    assert process_tree(child.pid) == []


def test_wrk_phase_without_answers_reports_none() -> None:
    with socket.socket() as silent:  # listens, never accepts: connections open, requests go unanswered
        silent.bind((HOST, 0))
        silent.listen()
        with request_bodies(make_images(1, 40)) as bodies:
            phase = wrk_phase(silent.getsockname()[1], bodies, connections=1, requests=1, seconds=1)
    assert phase.requests == 0 and phase.statuses == {} and phase.throughput == 0 and math.isnan(phase.p50_ms)


def test_wrk_closed_loop_phase_counts_every_answer_with_its_latency(tiny_model) -> None:
    with Service(tiny_model) as server, request_bodies(make_images(2, 40)) as bodies:
        phase = wrk_phase(server.port, bodies, connections=2, requests=40, seconds=5)
        assert server.rss_mib() > 0 and server.ready_s > 0 and get(server.port, "/readyz")[0] == 200
        overlay = wrk_phase(server.port, bodies, 1, 3, 5, target="/classify?attention=overlay")
        with request_bodies([photo(60, 40), photo(60, 40, kind="PNG")], MULTIPART) as forms:
            uploads = wrk_phase(server.port, forms, 2, 6, 1, content_type=MULTIPART)
        assert server.processes() == 1
    assert phase.statuses == {"200": 40}  # 20 per connection, then each thread stops
    assert 0 < phase.p50_ms <= phase.p99_ms and phase.throughput > 0 and phase.retry_after is None
    assert overlay.statuses == {"200": 3} and uploads.statuses == {"200": 6}
    assert get(server.port, "/readyz") == (0, b"")  # stopped: nothing answers


def test_wrk_paced_phase_overflows_a_short_queue_into_quick_503s(tiny_model) -> None:
    # Images linger 200 ms for company, so a queue of one image overflows under a paced stream.
    env = {"CASTREAM_MAX_BATCH_DELAY_MS": "200", "CASTREAM_MAX_QUEUE": "1", "CASTREAM_MAX_IMAGES_PER_REQUEST": "1"}
    with Service(tiny_model, **env) as server, request_bodies(make_images(2, 40)) as bodies:
        phase = wrk_phase(server.port, bodies, connections=4, requests=200, seconds=2, rate=50)
    assert set(phase.statuses) == {"200", "503"} and phase.statuses["503"] > phase.statuses["200"]
    assert phase.retry_after == "1" and phase.rejected_p50_ms is not None
    assert phase.requests < 150  # paced at 50/s for 2 s: far fewer than the cap
