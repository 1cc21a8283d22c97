"""ONNX Runtime speed of the exported graphs, side by side: CA against GAP, int8 against float32.

python -m benchmarks onnx_speed                       # ResNet-50 at 224 px, single-threaded, ~1 minute of timing
python -m benchmarks onnx_speed --budget-s 20         # shorter

Three graphs of one model (random weights: no model hub here, and speed does not depend on the weights)
run on the same inputs in alternating order, at batch 1 (latency) and at a larger batch (throughput):
- ``fp32-gap``: the backbone with global average pooling, as torchvision ships it;
- ``fp32-ca``: the same backbone with the CA stream, the graph the service runs;
- ``int8-ca``: that graph quantised (calibrated on random images: enough for timing, not for accuracy).
Headline figures: the CA/GAP latency ratio at batch 1 (the stream's ~0.25 % of the multiply-adds; aim
<= 1.03) and the int8/fp32 throughput ratio at the larger batch (aim >= 2.0). Measuring takes about
``--budget-s`` seconds; exporting and quantising the graphs comes on top (about a minute for ResNet-50).
"""

from __future__ import annotations

import logging
import time
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

log = logging.getLogger(__name__)

GAP, CA, INT8 = "fp32-gap", "fp32-ca", "int8-ca"
AIM_CA_OVER_GAP = 1.03
AIM_INT8_OVER_FP32 = 2.0


def build_graphs(
    backbone: str = "resnet50", image_size: int = 224, num_classes: int = 1000, seed: int = 0
) -> dict[str, onnx.ModelProto]:
    """The three graphs of one randomly initialised model, as ``export.to_onnx`` builds them."""
    torch.manual_seed(seed)
    model = CAStreamNet(ModelConfig(backbone, num_classes)).eval()
    ca = export_graph(model, "ca", image_size)
    calibration = random_images(8, image_size, seed)
    return {GAP: export_graph(model, "gap", image_size), CA: ca, INT8: quantize_int8(ca, calibration)}


def random_images(count: int, image_size: int, seed: int = 0) -> np.ndarray:
    """Normalised-looking inputs (N, 3, S, S): standard normal, the statistics of normalised pixels."""
    return np.random.default_rng(seed).standard_normal((count, 3, image_size, image_size), dtype=np.float32)


def measure(
    graphs: dict[str, onnx.ModelProto], image_size: int, batch_size: int = 8, threads: int = 1, budget_s: float = 60.0,
    backbone: str = "resnet50",
) -> dict[str, Any]:  # fmt: skip
    """Times every graph at batch 1 (a third of ``budget_s``) and at ``batch_size`` (the rest): the record."""
    if budget_s <= 0:
        raise ValueError(f"budget_s must be positive, got {budget_s!r}")
    sessions = {name: make_session(graph, threads) for name, graph in graphs.items()}
    images = random_images(batch_size, image_size, seed=1)
    latency = time_sessions(sessions, images[:1], budget_s=budget_s / 3)
    throughput = time_sessions(sessions, images, budget_s=budget_s * 2 / 3)
    timings = {
        f"batch{t.batch_size}": {name: {"median_ms": t.median_ms(name), "images_per_s": t.images_per_second(name)}
                                 for name in t.seconds} | {"rounds": t.rounds}
        for t in (latency, throughput)
    }  # fmt: skip
    return {
        "backbone": backbone,
        "image_size": image_size,
        "threads": threads,
        "ca_over_gap_latency": latency.ratio(CA, GAP),  # medians of the paired per-round ratios
        "ca_over_gap_batch_throughput": throughput.ratio(CA, GAP),
        "int8_over_fp32_throughput": throughput.ratio(CA, INT8),
        "int8_over_fp32_latency": latency.ratio(CA, INT8),
        "timings": timings,
    }


def run(
    backbone: str = "resnet50", image_size: int = 224, batch_size: int = 8, threads: int = 1, budget_s: float = 60.0
) -> dict[str, Any]:
    """Builds the graphs and measures them."""
    started = time.perf_counter()
    graphs = build_graphs(backbone, image_size)
    log.info("built %s in %.0f s; timing for about %.0f s", ", ".join(graphs), time.perf_counter() - started, budget_s)
    return measure(graphs, image_size, batch_size, threads, budget_s, backbone)


def _aims(result: dict | None) -> list[Aim]:
    return [
        Aim("CA / GAP latency, ResNet-50 at 224, batch 1", dig(result, "ca_over_gap_latency"), AIM_CA_OVER_GAP, False),
        Aim(
            "int8 / fp32 throughput, ResNet-50 at 224",
            dig(result, "int8_over_fp32_throughput"),
            AIM_INT8_OVER_FP32,
            True,
        ),  # fmt: skip
    ]


def _render(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    lines = [
        f"{r['backbone']} at {r['image_size']} x {r['image_size']} with random weights (speed does not depend on "
        f"them), {r['threads']} thread(s); the graphs alternate round by round on the same inputs. Ratios are the "
        "median of per-round ratios.",
        "",
    ]
    timings = r["timings"]
    rows = [[graph, *(fmt(timings[batch][graph][key]) for batch in timings for key in ("median_ms", "images_per_s"))]
            for graph in (GAP, CA, INT8)]  # fmt: skip
    batches = [batch.replace("batch", "batch ") for batch in timings]
    lines += table(["graph", *(f"{batch}: {unit}" for batch in batches for unit in ("ms", "images/s"))], rows)
    lines += [
        "",
        f"- CA / GAP latency at batch 1: **{r['ca_over_gap_latency']:.3f}** (aim <= {AIM_CA_OVER_GAP:g}); "
        f"CA / GAP time at {batches[-1]}: {r['ca_over_gap_batch_throughput']:.3f}.",
        f"- int8 / fp32 throughput of the CA graph at {batches[-1]}: **{r['int8_over_fp32_throughput']:.2f}x** "
        f"(aim >= {AIM_INT8_OVER_FP32:g}); at batch 1: {r['int8_over_fp32_latency']:.2f}x.",
        "",
    ]
    return lines


SECTIONS = (
    Section(
        "onnx_speed",
        "CA against GAP, int8 against fp32 (ONNX Runtime)",
        full={"backbone": "resnet50", "image_size": 224, "budget_s": 75.0},
        quick={"backbone": "resnet18", "image_size": 64, "budget_s": 1.0},
        run=lambda context: run(**context.budget),
        render=_render,
        reads=(),
        aims=_aims,
    ),
)
