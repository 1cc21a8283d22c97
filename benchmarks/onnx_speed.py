"""ONNX Runtime speed of one model's graphs side by side: ``fp32-gap`` (global average pooling), ``fp32-ca`` (with the
CA stream, as served) and ``int8-ca`` (that graph quantised on random images: fine for timing, not for accuracy)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch

from benchmarks.sections import Aim, Section, dig, fmt, table
from export.graph import export_graph
from export.quantize import quantize_int8
from export.sessions import make_session
from export.timing import time_sessions
from training.model import CAStreamNet, ModelConfig

GAP, CA, INT8 = "fp32-gap", "fp32-ca", "int8-ca"
CA_AIM, INT8_AIM = 1.03, 2.0  # CA / GAP latency at most, int8 / fp32 throughput at least


def random_model(backbone: str, classes: int) -> CAStreamNet:
    """A CA model with random weights: no model hub here, and a pass costs the same whatever the weights."""
    torch.manual_seed(0)
    return CAStreamNet(ModelConfig(backbone, classes)).eval()


def random_images(count: int, image_size: int, seed: int = 0) -> np.ndarray:  # the statistics of normalised pixels
    return np.random.default_rng(seed).standard_normal((count, 3, image_size, image_size), dtype=np.float32)


def run(
    backbone: str = "resnet50", image_size: int = 224, batch_size: int = 8, threads: int = 1, budget_s: float = 75.0
) -> dict[str, Any]:
    """The three graphs of a random ``backbone`` (1000 classes), timed by :func:`measure` (not counting exports)."""
    model = random_model(backbone, 1000)
    gap, ca = (export_graph(model, pooling, image_size) for pooling in ("gap", "ca"))
    graphs = {GAP: gap, CA: ca, INT8: quantize_int8(ca, random_images(8, image_size))}
    return measure(graphs, image_size, batch_size, threads, budget_s, backbone)


def measure(
    graphs: dict[str, onnx.ModelProto], image_size: int, batch_size: int, threads: int, budget_s: float, backbone: str
) -> dict[str, Any]:
    """Times every graph at batch 1 (a third of ``budget_s``) and at ``batch_size`` (the rest)."""
    sessions = {name: make_session(graph, threads) for name, graph in graphs.items()}
    images = random_images(batch_size, image_size, seed=1)
    one, many = time_sessions(sessions, images[:1], budget_s / 3), time_sessions(sessions, images, budget_s * 2 / 3)
    timings = {
        f"batch{t.batch_size}": {name: {"median_ms": t.median_ms(name), "images_per_s": t.images_per_second(name)}
                                 for name in t.seconds} | {"rounds": t.rounds}
        for t in (one, many)
    }  # fmt: skip
    return {"backbone": backbone, "image_size": image_size, "threads": threads, "timings": timings,
            "ca_over_gap_latency": one.ratio(CA, GAP), "ca_over_gap_batch_throughput": many.ratio(CA, GAP),
            "int8_over_fp32_throughput": many.ratio(CA, INT8),
            "int8_over_fp32_latency": one.ratio(CA, INT8)}  # fmt: skip


def _render(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    timings = r["timings"]
    batches = [batch.replace("batch", "batch ") for batch in timings]
    rows = [[graph, *(fmt(timings[batch][graph][key]) for batch in timings for key in ("median_ms", "images_per_s"))]
            for graph in (GAP, CA, INT8)]  # fmt: skip
    return [
        f"{r['backbone']} at {r['image_size']} x {r['image_size']} with random weights (speed does not depend on "
        f"them), {r['threads']} thread(s); the graphs alternate round by round on the same inputs. Ratios are the "
        "median of per-round ratios.",
        "",
        *table(["graph", *(f"{batch}: {unit}" for batch in batches for unit in ("ms", "images/s"))], rows),
        "",
        f"- CA / GAP latency at batch 1: **{r['ca_over_gap_latency']:.3f}** (aim <= {CA_AIM:g}); "
        f"CA / GAP time at {batches[-1]}: {r['ca_over_gap_batch_throughput']:.3f}.",
        f"- int8 / fp32 throughput of the CA graph at {batches[-1]}: **{r['int8_over_fp32_throughput']:.2f}x** "
        f"(aim >= {INT8_AIM:g}); at batch 1: {r['int8_over_fp32_latency']:.2f}x.",
        "",
    ]


def _aims(r: dict[str, Any] | None) -> list[Aim]:
    return [
        Aim("CA / GAP latency, ResNet-50 at 224, batch 1", dig(r, "ca_over_gap_latency"), CA_AIM, False),
        Aim("int8 / fp32 throughput, ResNet-50 at 224", dig(r, "int8_over_fp32_throughput"), INT8_AIM, True),
    ]


SECTIONS = (Section("onnx_speed", "CA against GAP, int8 against fp32 (ONNX Runtime)", run,
                    {"backbone": "resnet18", "image_size": 64, "budget_s": 1.0}, _render, _aims),)  # fmt: skip
