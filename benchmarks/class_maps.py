"""What the ``class_maps`` output costs a client, fetched or not: ``session.run`` latency side by side.

python -m benchmarks.class_maps                    # the default model's shape and ResNet-50 at 224, ~1 minute
python -m benchmarks.class_maps --budget-s 10 --json

For each model (random weights: speed does not depend on them), three ways to run the same images in
alternating order, at batch 1 and at a larger batch:
- ``without``: the graph with the ``class_maps`` output removed, as a file exported before it existed;
- ``unfetched``: the full graph, fetching ``logits`` and ``attention`` only (what ``/classify`` does);
- ``fetched``: the full graph, fetching all three outputs.
ONNX Runtime runs every node of a graph whatever is fetched, so ``unfetched / without`` is the price of the
output being there, and ``fetched / unfetched`` the price of copying the maps out.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch

from export.graph import ATTENTION, CLASS_MAPS, LOGITS, export_graph
from export.sessions import make_session
from export.timing import Timings, time_sessions
from training.logs import setup_logging
from training.model import CAStreamNet, ModelConfig

log = logging.getLogger("benchmarks.class_maps")

WITHOUT, UNFETCHED, FETCHED = "without", "unfetched", "fetched"
MODELS = (("resnet18", 112, 10), ("resnet50", 224, 1000))  # the default model's shape, and an ImageNet-sized one


class Fetching:
    """A session that fetches ``outputs`` whatever ``run`` is asked for (so the timer can stay generic)."""

    def __init__(self, session: Any, outputs: list[str]):
        self.session, self.outputs = session, outputs

    def run(self, _names: object, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.outputs, feed)


def without_class_maps(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` without the ``class_maps`` output (ONNX Runtime then drops the nodes only it needed)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    kept = [value for value in copy.graph.output if value.name != CLASS_MAPS]
    del copy.graph.output[:]
    copy.graph.output.extend(kept)
    return copy


@dataclass(frozen=True)
class Cost:
    backbone: str
    image_size: int
    classes: int
    timings: list[Timings]

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for t in self.timings:
            rows.append(
                {
                    "batch_size": t.batch_size,
                    "rounds": t.rounds,
                    "ms": {name: round(t.median_ms(name), 3) for name in (WITHOUT, UNFETCHED, FETCHED)},
                    "unfetched_over_without": round(t.ratio(UNFETCHED, WITHOUT), 4),
                    "fetched_over_unfetched": round(t.ratio(FETCHED, UNFETCHED), 4),
                }
            )
        return {"backbone": self.backbone, "image_size": self.image_size, "classes": self.classes, "batches": rows}


def measure(
    backbone: str, image_size: int, classes: int, batch_sizes: tuple[int, ...], threads: int, budget_s: float
) -> Cost:
    torch.manual_seed(0)
    model = CAStreamNet(ModelConfig(backbone, classes)).eval()
    proto = export_graph(model, "ca", image_size)
    full, plain = make_session(proto, threads), make_session(without_class_maps(proto), threads)
    sessions = {
        WITHOUT: Fetching(plain, [LOGITS, ATTENTION]),
        UNFETCHED: Fetching(full, [LOGITS, ATTENTION]),
        FETCHED: Fetching(full, [LOGITS, ATTENTION, CLASS_MAPS]),
    }
    images = np.random.default_rng(0).standard_normal((max(batch_sizes), 3, image_size, image_size), np.float32)
    timings = [time_sessions(sessions, images[:size], budget_s / len(batch_sizes)) for size in batch_sizes]
    return Cost(backbone, image_size, classes, timings)


def format_report(costs: list[Cost], threads: int) -> str:
    lines = [
        f"session.run latency, ONNX Runtime CPU, {threads} thread(s), median of alternating rounds",
        "",
        "| model | batch | without the output (ms) | output not fetched (ms) | fetched (ms) "
        "| not fetched / without | fetched / not fetched |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for cost in costs:
        for row in cost.to_dict()["batches"]:
            ms = row["ms"]
            lines.append(
                f"| {cost.backbone} {cost.image_size} px, {cost.classes} classes | {row['batch_size']} "
                f"| {ms[WITHOUT]:.2f} | {ms[UNFETCHED]:.2f} | {ms[FETCHED]:.2f} "
                f"| {row['unfetched_over_without']:.3f} | {row['fetched_over_unfetched']:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.class_maps",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (0: all cores; 1 is steadiest)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--budget-s", type=float, default=20.0, help="seconds of timing per model")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    setup_logging(logging.WARNING)
    costs = [measure(*spec, tuple(args.batch_sizes), args.threads, args.budget_s) for spec in MODELS]
    report = {"threads": args.threads, "models": [c.to_dict() for c in costs]}
    print(json.dumps(report, indent=2) if args.json else format_report(costs, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
