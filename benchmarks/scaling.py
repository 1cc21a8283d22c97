"""How cost grows with work: batch size (raw ONNX Runtime and the service) and image size (decode + resize).

- ``batch_sweep``: ``session.run`` on batches of 1 to 32 preprocessed images, sizes interleaved round by
  round (a round runs every size once, forwards then backwards), so a change in background load shifts all
  sizes alike. The session is opened as the service opens it.
- ``service_batch_sweep``: the service with ``CASTREAM_MAX_BATCH_SIZE`` = b under 2b closed-loop clients
  sending one image each: what a deployment gets from a larger batch, with the latency it pays.
- ``image_size_sweep``: decoding and preprocessing JPEGs of 0.3, 1, 4 and 12 megapixels with the service's
  own functions (``service.imaging.decode``, ``service.preprocess.Preprocessor``).

python -m benchmarks batch --model models/castream.onnx [--budget-s 20]   # and service_batch, image_size
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.harness import (
    LoadConfig,
    closed_loop,
    interleaved,
    make_images,
    model_inputs,
    service_process,
    summarise,
)
from benchmarks.sections import Section, fmt, result_of, table
from service.contract import INPUT
from service.imaging import decode
from service.model import load_model
from service.preprocess import Preprocessor

log = logging.getLogger(__name__)

BATCH_SIZES = (1, 2, 4, 8, 16, 32)
MEGAPIXELS = (0.3, 1.0, 4.0, 12.0)


def batch_sweep(
    model_path: Path,
    sizes: Sequence[int] = BATCH_SIZES,
    providers: Sequence[str] = ("cpu",),
    threads: int = 0,
    budget_s: float = 20.0,
    min_rounds: int = 3,
) -> list[dict[str, float]]:
    """Latency and throughput of ``session.run`` per batch size, on the named ONNX Runtime providers."""
    model = load_model(model_path, list(providers), threads)
    inputs = model_inputs(model_path, max(sizes))
    feeds = {size: {INPUT: np.ascontiguousarray(inputs[:size])} for size in sizes}
    for size in sizes:  # the first run of each shape allocates and picks kernels
        model.session.run(None, feeds[size])
    seconds = interleaved(
        {size: (lambda feed=feeds[size]: model.session.run(None, feed)) for size in sizes}, budget_s, min_rounds
    )
    return [{"batch_size": size} | summarise(seconds[size], size) for size in sizes]


def service_batch_sweep(
    config: LoadConfig, sizes: Sequence[int] = BATCH_SIZES, requests_per_image: int = 8, seconds: float = 10.0
) -> list[dict[str, Any]]:
    """Service throughput and client latency with ``CASTREAM_MAX_BATCH_SIZE`` = b and 2b clients, per size b."""
    info = load_model(config.model, ["cpu"]).info
    images = make_images(config.images, info.preprocessing.resize)
    points = []
    for size in sizes:
        clients = 2 * size
        sized = replace(config, batch_size=size)
        with service_process(sized, CASTREAM_MAX_QUEUE=str(max(64, 2 * clients))) as server:
            asyncio.run(closed_loop(server.port, images, clients, clients, seconds))  # warm-up
            log.info("service with batches of up to %d images, %d clients", size, clients)
            phase = asyncio.run(closed_loop(server.port, images, clients, requests_per_image * clients, seconds))
        points.append(
            {
                "batch_size": size,
                "clients": clients,
                "requests": phase.requests,
                "statuses": phase.statuses,
                "images_per_second": phase.throughput,
                "p50_ms": phase.p50_ms,
                "p99_ms": phase.p99_ms,
            }
        )
    return points


def photo_jpeg(megapixels: float, seed: int = 0, quality: int = 90) -> tuple[bytes, int, int]:
    """A 4:3 JPEG of about ``megapixels`` with smooth colour waves and sensor-like noise; (bytes, width, height)."""
    height = round((megapixels * 1e6 * 3 / 4) ** 0.5)
    width = round(height * 4 / 3)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    waves = [127 + 90 * np.sin(x / (40 + 13 * c) + y / (57 + 7 * c) + c) for c in range(3)]
    pixels = np.stack(waves, axis=-1) + rng.normal(0, 6, (height, width, 3)).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue(), width, height


def image_size_sweep(
    model_path: Path, megapixels: Sequence[float] = MEGAPIXELS, budget_s: float = 10.0, min_rounds: int = 3
) -> list[dict[str, Any]]:
    """Decode and preprocess time per image size, with the service's functions and the model's preprocessing."""
    prepare = Preprocessor(load_model(model_path, ["cpu"]).info.preprocessing)
    files = {mp: photo_jpeg(mp, seed=i) for i, mp in enumerate(megapixels)}
    decoded = {mp: decode(data, 10**9) for mp, (data, _, _) in files.items()}
    steps: dict[tuple[str, float], Callable[[], object]] = {}
    for mp, (data, _, _) in files.items():
        steps[("decode", mp)] = lambda data=data: decode(data, 10**9)
        steps[("preprocess", mp)] = lambda image=decoded[mp]: prepare(image)
    seconds = interleaved(steps, budget_s, min_rounds)
    points = []
    for mp, (data, width, height) in files.items():
        decode_ms = float(np.median(seconds[("decode", mp)])) * 1000
        preprocess_ms = float(np.median(seconds[("preprocess", mp)])) * 1000
        points.append(
            {
                "megapixels": mp,
                "width": width,
                "height": height,
                "jpeg_bytes": len(data),
                "rounds": len(seconds[("decode", mp)]),
                "decode_ms": decode_ms,
                "preprocess_ms": preprocess_ms,
                "total_ms": decode_ms + preprocess_ms,
                "images_per_second_per_core": 1000 / (decode_ms + preprocess_ms),
            }
        )
    return points


def _render_batches(raw: list[dict[str, Any]], results: dict[str, Any]) -> list[str]:
    service = {p["batch_size"]: p for p in result_of(results, "service_batch") or []}
    plot = results.get("plot")
    lines = [
        "Raw: `session.run` on b preprocessed images, sizes interleaved round by round (p99 over the rounds). "
        "Service: `CASTREAM_MAX_BATCH_SIZE` = b under 2b closed-loop clients of one image each, so batches can fill.",
        "",
    ]
    rows = []
    for point in raw:
        s = service.get(point["batch_size"], {})
        rows.append(
            [
                str(point["batch_size"]),
                fmt(point["images_per_second"]),
                fmt(point["p50_ms"]),
                fmt(point["p99_ms"]),
                fmt(s.get("images_per_second")),
                f"{fmt(s.get('p50_ms'))} / {fmt(s.get('p99_ms'))}",
            ]
        )
    header = ["batch", "raw images/s", "raw p50 ms", "raw p99 ms", "service images/s", "service p50 / p99 ms"]
    lines += table(header, rows)
    if plot:
        lines += ["", f"![throughput against batch size]({plot})"]
    return [*lines, ""]


def _render_image_sizes(r: list[dict[str, Any]], results: dict[str, Any]) -> list[str]:
    lines = [
        "Decoding (`service.imaging.decode`: bytes to RGB, EXIF orientation) and preprocessing (resize of the shorter "
        "side, crop, normalise, to the served model's input) of one 4:3 JPEG (quality 90) on one core, medians.",
        "",
    ]
    rows = [
        [
            f"{p['megapixels']:g}",
            f"{p['width']} x {p['height']}",
            f"{p['jpeg_bytes'] / 1e6:.2f}",
            fmt(p["decode_ms"]),
            fmt(p["preprocess_ms"]),
            fmt(p["total_ms"]),
            fmt(p["images_per_second_per_core"]),
        ]
        for p in r
    ]
    header = ["megapixels", "pixels", "MB", "decode ms", "preprocess ms", "total ms", "images/s per core"]
    return [*lines, *table(header, rows), ""]


SECTIONS = (
    Section(
        "batch",
        "Cost against batch size",
        full={"budget_s": 24.0},
        quick={"budget_s": 0.5},
        run=lambda context: batch_sweep(context.model, budget_s=context.budget["budget_s"]),
        render=_render_batches,
    ),
    Section(
        "service_batch",
        "Cost against batch size in the service",
        full={"requests_per_image": 8, "seconds": 12.0},
        quick={"requests_per_image": 2, "seconds": 3.0},
        run=lambda context: service_batch_sweep(
            LoadConfig(model=context.model),
            BATCH_SIZES,
            context.budget["requests_per_image"],
            context.budget["seconds"],
        ),
        render=lambda result, results: [],  # shown beside the raw sweep, in "Cost against batch size"
    ),
    Section(
        "image_size",
        "Cost against image size",
        full={"budget_s": 12.0},
        quick={"budget_s": 0.5},
        run=lambda context: image_size_sweep(context.model, budget_s=context.budget["budget_s"]),
        render=_render_image_sizes,
    ),
)
