"""How cost grows with work: batch size (raw ONNX Runtime, the service, and a GPU where there is one) and image
size (the service's decoding and preprocessing)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.sections import Section, body, fmt, result_of, table
from service.contract import CUDA, INPUT
from service.imaging import decode_reduced
from service.model import load_model
from service.preprocess import Preprocessor

log = logging.getLogger(__name__)

BATCH_SIZES = (1, 2, 4, 8, 16, 32)
MEGAPIXELS = (0.3, 1.0, 4.0, 12.0)


def batch_sweep(
    model: Path, budget_s: float = 24.0, sizes: Sequence[int] = BATCH_SIZES, providers: Sequence[str] = ("cpu",),
    min_rounds: int = 3,
) -> list[dict[str, float]]:  # fmt: skip
    """Latency and throughput of ``session.run`` per batch size, on the named ONNX Runtime providers, with the
    session opened as the service opens it."""
    onnx, inputs = load_model(model, list(providers)), harness.model_inputs(model, max(sizes))
    feeds = {size: {INPUT: np.ascontiguousarray(inputs[:size])} for size in sizes}
    for feed in feeds.values():  # the first run of each shape allocates and picks kernels
        onnx.session.run(None, feed)
    steps = {size: (lambda feed=feed: onnx.session.run(None, feed)) for size, feed in feeds.items()}
    seconds = harness.interleaved(steps, budget_s, min_rounds)
    return [{"batch_size": size} | harness.summarise(seconds[size], size) for size in sizes]


def service_batch_sweep(
    model: Path, requests_per_image: int = 8, seconds: float = 12.0, sizes: Sequence[int] = BATCH_SIZES
) -> list[dict[str, Any]]:
    """Service throughput and client latency with ``CASTREAM_MAX_BATCH_SIZE`` = b and 2b clients, per size b."""

    def measure(server: harness.Service, size: int) -> dict[str, Any]:
        clients = 2 * size
        harness.wrk_phase(server.port, bodies, clients, clients, seconds)  # warm-up
        log.info("service with batches of up to %d images, %d clients", size, clients)
        phase = harness.wrk_phase(server.port, bodies, clients, requests_per_image * clients, seconds)
        return {"batch_size": size, "clients": clients, "requests": phase.requests, "statuses": phase.statuses,
                "images_per_second": phase.throughput, "p50_ms": phase.p50_ms, "p99_ms": phase.p99_ms}  # fmt: skip

    queue = {"CASTREAM_MAX_QUEUE": str(max(64, 4 * max(sizes)))}  # room for every client's image
    with harness.request_bodies(harness.model_images(model, 32)) as bodies:
        return list(harness.fresh_services(model, "CASTREAM_MAX_BATCH_SIZE", sizes, 1, measure, **queue).values())


def photo_jpeg(megapixels: float, seed: int = 0) -> tuple[bytes, int, int]:
    """A 4:3 photo of about ``megapixels``: (JPEG bytes, width, height)."""
    height = round((megapixels * 1e6 * 3 / 4) ** 0.5)
    width = round(height * 4 / 3)
    return harness.photo(width, height, seed), width, height


def image_size_sweep(
    model: Path, budget_s: float = 12.0, megapixels: Sequence[float] = MEGAPIXELS, min_rounds: int = 3
) -> list[dict[str, Any]]:
    """Decode and preprocess time per image size, with the service's functions and the model's preprocessing: the
    service's decode at the scale the model needs, and the full decode beside it."""
    prepare = Preprocessor(load_model(model, ["cpu"]).info.preprocessing)
    files = {mp: photo_jpeg(mp, seed=i) for i, mp in enumerate(megapixels)}
    steps: dict[tuple[str, float], Callable[[], object]] = {}
    for mp, (data, _, _) in files.items():
        full, reduced = decode_reduced(data, 10**9), decode_reduced(data, 10**9, prepare.decode_side)
        steps[("full decode", mp)] = lambda data=data: decode_reduced(data, 10**9)
        steps[("full preprocess", mp)] = lambda image=full.image: prepare(image)
        steps[("decode", mp)] = lambda data=data: decode_reduced(data, 10**9, prepare.decode_side)
        steps[("preprocess", mp)] = lambda d=reduced: prepare(d.image, size=d.size)
    seconds = harness.interleaved(steps, budget_s, min_rounds)
    points = []
    for mp, (data, width, height) in files.items():
        ms = {step: float(np.median(seconds[(step, mp)])) * 1000 for step, key in steps if key == mp}
        total, full = ms["decode"] + ms["preprocess"], ms["full decode"] + ms["full preprocess"]
        points.append({"megapixels": mp, "width": width, "height": height, "jpeg_bytes": len(data),
                       "rounds": len(seconds[("decode", mp)]), "decode_ms": ms["decode"],
                       "preprocess_ms": ms["preprocess"], "total_ms": total, "full_decode_ms": ms["full decode"],
                       "full_preprocess_ms": ms["full preprocess"], "full_total_ms": full,
                       "images_per_second_per_core": 1000 / total})  # fmt: skip
    return points


def describe_gpu() -> str:
    """The GPUs torch sees and the providers ONNX Runtime offers, in one line."""
    import onnxruntime as ort
    import torch

    providers = ", ".join(ort.get_available_providers())
    if not torch.cuda.is_available():
        return f"none (torch.cuda.is_available() is False; ONNX Runtime providers: {providers})"
    names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
    return f"{', '.join(names)} (ONNX Runtime providers: {providers})"


def gpu_plan(available_providers: list[str], cuda_devices: int) -> tuple[bool, str]:
    """Whether anything can be measured on a GPU, and why not when nothing can."""
    if cuda_devices == 0:
        return False, "no CUDA device on this machine"
    if CUDA not in available_providers:
        return False, (f"a CUDA device is present but ONNX Runtime offers only {available_providers}; install the "
                       "`serve-gpu` extra (onnxruntime-gpu) to measure the CUDA provider")  # fmt: skip
    return True, ""


def gpu(model: Path, budget_s: float = 24.0, fp16_model: Path | None = None) -> dict[str, Any]:
    """Batch sweeps on the CUDA provider, or ``{"measured": False, "reason": ...}``; nothing is estimated."""
    import onnxruntime as ort
    import torch

    measurable, reason = gpu_plan(ort.get_available_providers(), torch.cuda.device_count())
    if not measurable:
        return {"measured": False, "reason": reason}
    sweeps = {"fp32 (CUDA)": batch_sweep(model, budget_s, providers=["cuda"])}
    if fp16_model is None or not fp16_model.is_file():
        return {"measured": True, "sweeps": sweeps,
                "notes": ["fp16: no fp16 export given (`python -m export.to_onnx --fp16`), not measured"]}  # fmt: skip
    sweeps["fp16 (CUDA)"] = batch_sweep(fp16_model, budget_s, providers=["cuda"])
    return {"measured": True, "sweeps": sweeps, "notes": []}


def _render_batches(raw: list[dict[str, Any]], results: dict[str, Any]) -> list[str]:
    service = {p["batch_size"]: p for p in result_of(results, "service_batch") or []}
    rows = [[str(p["batch_size"]), fmt(p["images_per_second"]), fmt(p["p50_ms"]), fmt(p["p99_ms"]),
             fmt(service.get(p["batch_size"], {}).get("images_per_second")),
             f"{fmt(service.get(p['batch_size'], {}).get('p50_ms'))} / "
             f"{fmt(service.get(p['batch_size'], {}).get('p99_ms'))}"] for p in raw]  # fmt: skip
    header = ["batch", "raw images/s", "raw p50 ms", "raw p99 ms", "service images/s", "service p50 / p99 ms"]
    plot = f"![throughput against batch size]({results['plot']})" if results.get("plot") else ""
    return body(
        "Raw: `session.run` on b preprocessed images, sizes interleaved round by round (p99 over the rounds). "
        "Service: `CASTREAM_MAX_BATCH_SIZE` = b under 2b closed-loop `wrk` connections of one image each, so batches "
        "can fill.",
        table(header, rows),
        plot,
    )


def _render_image_sizes(r: list[dict[str, Any]], results: dict[str, Any]) -> list[str]:
    rows = [[f"{p['megapixels']:g}", f"{p['width']} x {p['height']}", f"{p['jpeg_bytes'] / 1e6:.2f}",
             f"{fmt(p['full_decode_ms'])} + {fmt(p['full_preprocess_ms'])} = {fmt(p['full_total_ms'])}",
             f"{fmt(p['decode_ms'])} + {fmt(p['preprocess_ms'])} = {fmt(p['total_ms'])}",
             fmt(p["full_total_ms"] / p["total_ms"], 1) + "x", fmt(p["images_per_second_per_core"])]
            for p in r]  # fmt: skip
    header = ["megapixels", "pixels", "MB", "full decode + preprocess ms", "service's decode + preprocess ms",
              "full / service", "images/s per core"]  # fmt: skip
    return body(
        "One 4:3 JPEG (quality 90) on one core, medians: decoded in full (`service.imaging.decode`: bytes to RGB, EXIF "
        "orientation) and preprocessed (resize of the shorter side, crop, normalise, to the served model's input), "
        "against the service's path (`decode_reduced` at the smallest DCT scale that keeps three times the resize "
        "target, then the same preprocessing from there).",
        table(header, rows),
    )


def _render_gpu(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    if not r.get("measured"):
        return body(f"**Not measured**: {r['reason']}. No GPU figure is estimated.")
    tables = [[f"{name}:", "", *table(["batch", "images/s", "p50 ms", "p99 ms"], [[str(p["batch_size"]),
               fmt(p["images_per_second"]), fmt(p["p50_ms"]), fmt(p["p99_ms"])] for p in points])]
              for name, points in r["sweeps"].items()]  # fmt: skip
    return body(*tables, [f"- {note}" for note in r["notes"]])


SECTIONS = (
    Section("batch", "Cost against batch size", batch_sweep, {"budget_s": 0.5}, _render_batches),
    Section("service_batch", "Cost against batch size in the service", service_batch_sweep,
            {"requests_per_image": 2, "seconds": 3.0}, lambda result, results: []),  # shown beside the raw sweep
    Section("image_size", "Cost against image size", image_size_sweep, {"budget_s": 0.5}, _render_image_sizes),
    Section("gpu", "GPU", gpu, {"budget_s": 0.5}, _render_gpu),
)  # fmt: skip
