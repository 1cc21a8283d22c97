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
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch

from benchmarks.sections import Aim, Context, Section, dig, fmt, table
from export.graph import export_graph
from export.quantize import quantize_int8
from export.sessions import make_session
from export.timing import Timings, time_sessions
from training.model import CAStreamNet, ModelConfig

log = logging.getLogger(__name__)

GAP, CA, INT8 = "fp32-gap", "fp32-ca", "int8-ca"
AIM_CA_OVER_GAP = 1.03
AIM_INT8_OVER_FP32 = 2.0


@dataclass(frozen=True)
class SpeedReport:
    """Timings at batch 1 and at ``throughput.batch_size``, with the two headline ratios."""

    backbone: str
    image_size: int
    threads: int
    latency: Timings
    throughput: Timings

    @property
    def ca_over_gap(self) -> float:
        """CA latency / GAP latency at batch 1 (median of paired rounds)."""
        return self.latency.ratio(CA, GAP)

    @property
    def int8_over_fp32(self) -> float:
        """int8 throughput / float32 throughput of the CA graph at the larger batch."""
        return self.throughput.ratio(CA, INT8)

    def to_dict(self) -> dict:
        table = {
            f"batch{t.batch_size}": {
                name: {"median_ms": round(t.median_ms(name), 2), "images_per_s": round(t.images_per_second(name), 2)}
                for name in t.seconds
            }
            | {"rounds": t.rounds}
            for t in (self.latency, self.throughput)
        }
        return {
            "backbone": self.backbone,
            "image_size": self.image_size,
            "threads": self.threads,
            "ca_over_gap_latency": round(self.ca_over_gap, 4),
            "ca_over_gap_batch_throughput": round(self.throughput.ratio(CA, GAP), 4),
            "int8_over_fp32_throughput": round(self.int8_over_fp32, 3),
            "int8_over_fp32_latency": round(self.latency.ratio(CA, INT8), 3),
            "best_run_ratios": {
                "ca_over_gap_latency": round(self.latency.best_ratio(CA, GAP), 4),
                "int8_over_fp32_throughput": round(self.throughput.best_ratio(CA, INT8), 3),
            },
            "timings": table,
        }


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
    graphs: dict[str, onnx.ModelProto],
    image_size: int,
    batch_size: int = 8,
    threads: int = 1,
    budget_s: float = 60.0,
    backbone: str = "resnet50",
) -> SpeedReport:
    """Times every graph at batch 1 (a third of ``budget_s``) and at ``batch_size`` (the rest)."""
    if budget_s <= 0:
        raise ValueError(f"budget_s must be positive, got {budget_s!r}")
    sessions = {name: make_session(graph, threads) for name, graph in graphs.items()}
    images = random_images(batch_size, image_size, seed=1)
    latency = time_sessions(sessions, images[:1], budget_s=budget_s / 3)
    throughput = time_sessions(sessions, images, budget_s=budget_s * 2 / 3)
    return SpeedReport(backbone, image_size, threads, latency, throughput)


def run(
    backbone: str = "resnet50", image_size: int = 224, batch_size: int = 8, threads: int = 1, budget_s: float = 60.0
) -> SpeedReport:
    """Builds the graphs and measures them."""
    started = time.perf_counter()
    graphs = build_graphs(backbone, image_size)
    log.info("built %s in %.0f s; timing for about %.0f s", ", ".join(graphs), time.perf_counter() - started, budget_s)
    return measure(graphs, image_size, batch_size, threads, budget_s, backbone)


def format_report(report: SpeedReport) -> str:
    lines = [
        f"{report.backbone} at {report.image_size}x{report.image_size}, ONNX Runtime CPU, {report.threads} thread(s)"
    ]
    lines.append(
        f"{'graph':<10}" + "".join(f"{f'batch {t.batch_size}':>24}" for t in (report.latency, report.throughput))
    )
    for name in report.latency.seconds:
        cells = "".join(
            f"{t.median_ms(name):>10.1f} ms {t.images_per_second(name):>7.1f}/s"
            for t in (report.latency, report.throughput)
        )
        lines.append(f"{name:<10}{cells}")
    latency, throughput, batch = report.latency, report.throughput, report.throughput.batch_size
    lines.append(f"rounds: {latency.rounds} at batch 1, {throughput.rounds} at batch {batch}")
    lines.append("ratios: median over rounds of the paired ratio [ratio of the fastest runs]")
    lines.append(
        f"CA/GAP latency ratio (batch 1): {report.ca_over_gap:.3f} [{latency.best_ratio(CA, GAP):.3f}]"
        f"  (aim <= {AIM_CA_OVER_GAP})"
    )
    lines.append(
        f"CA/GAP time ratio (batch {batch}): {throughput.ratio(CA, GAP):.3f} [{throughput.best_ratio(CA, GAP):.3f}]"
    )
    lines.append(
        f"int8/fp32 throughput ratio (batch {batch}): {report.int8_over_fp32:.2f} "
        f"[{throughput.best_ratio(CA, INT8):.2f}]  (aim >= {AIM_INT8_OVER_FP32})"
    )
    return "\n".join(lines)


def _run(context: Context) -> dict:
    b = context.budget
    return run(b["backbone"], b["image_size"], budget_s=b["budget_s"]).to_dict()


def _aims(result: dict | None) -> list[Aim]:
    return [
        Aim("CA / GAP latency, ResNet-50 at 224, batch 1", dig(result, "ca_over_gap_latency"), AIM_CA_OVER_GAP, False),
        Aim(
            "int8 / fp32 throughput, ResNet-50 at 224",
            dig(result, "int8_over_fp32_throughput"),
            AIM_INT8_OVER_FP32,
            True,
        ),
    ]


def _render(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    lines = [
        f"{r['backbone']} at {r['image_size']} x {r['image_size']} with random weights (speed does not depend on "
        f"them), {r['threads']} thread(s); the graphs alternate round by round on the same inputs. Ratios are the "
        "median of per-round ratios.",
        "",
    ]
    timings = r["timings"]
    batches = list(timings)
    rows = []
    for graph in ("fp32-gap", "fp32-ca", "int8-ca"):
        cells = []
        for batch in batches:
            t = timings[batch].get(graph, {})
            cells += [fmt(t.get("median_ms")), fmt(t.get("images_per_s"))]
        rows.append([graph, *cells])
    batches = [batch.replace("batch", "batch ") for batch in batches]
    header = ["graph"]
    for batch in batches:
        header += [f"{batch}: ms", f"{batch}: images/s"]
    lines += table(header, rows)
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
        run=_run,
        render=_render,
        reads=(),
        aims=_aims,
    ),
)
