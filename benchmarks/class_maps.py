"""What the ``class_maps`` output costs a client, fetched or not: ``session.run`` latency side by side.

python -m benchmarks class_maps                    # the default model's shape and ResNet-50 at 224, ~1 minute

For each model (random weights: speed does not depend on them), three ways to run the same images in
alternating order, at batch 1 and at a larger batch:
- ``without``: the graph with the ``class_maps`` output removed, as a file exported before it existed;
- ``unfetched``: the full graph, fetching ``logits`` and ``attention`` only (what ``/classify`` does);
- ``fetched``: the full graph, fetching all three outputs.
ONNX Runtime runs every node of a graph whatever is fetched, so ``unfetched / without`` is the price of the
output being there, and ``fetched / unfetched`` the price of copying the maps out.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx
import torch

from benchmarks.sections import Section, table
from export.graph import export_graph
from export.sessions import make_session
from export.timing import Timings, time_sessions
from service.contract import ATTENTION, CLASS_MAPS, LOGITS
from training.model import CAStreamNet, ModelConfig

log = logging.getLogger(__name__)

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


def cost(timings: Timings) -> dict[str, Any]:
    """One batch size's record: the three medians and the two ratios."""
    return {
        "batch_size": timings.batch_size,
        "rounds": timings.rounds,
        "ms": {name: timings.median_ms(name) for name in (WITHOUT, UNFETCHED, FETCHED)},
        "unfetched_over_without": timings.ratio(UNFETCHED, WITHOUT),
        "fetched_over_unfetched": timings.ratio(FETCHED, UNFETCHED),
    }


def measure(
    backbone: str, image_size: int, classes: int, batch_sizes: tuple[int, ...], threads: int, budget_s: float
) -> dict[str, Any]:
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
    batches = [cost(time_sessions(sessions, images[:size], budget_s / len(batch_sizes))) for size in batch_sizes]
    return {"backbone": backbone, "image_size": image_size, "classes": classes, "batches": batches}


def run(threads: int = 1, batch_sizes: tuple[int, ...] = (1, 8), budget_s: float = 20.0) -> dict[str, Any]:
    """Every model of :data:`MODELS` at each batch size: the record of the section."""
    return {"threads": threads, "models": [measure(*spec, tuple(batch_sizes), threads, budget_s) for spec in MODELS]}


def _render(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    rows = [
        [f"{m['backbone']} {m['image_size']} px, {m['classes']} classes", str(row["batch_size"]),
         *(f"{row['ms'][name]:.2f}" for name in (WITHOUT, UNFETCHED, FETCHED)),
         f"{row['unfetched_over_without']:.3f}", f"{row['fetched_over_unfetched']:.3f}"]
        for m in r["models"] for row in m["batches"]
    ]  # fmt: skip
    header = ["model", "batch", "without the output (ms)", "output not fetched (ms)", "fetched (ms)",
              "not fetched / without", "fetched / not fetched"]  # fmt: skip
    return [
        f"`session.run` latency, {r['threads']} ONNX Runtime thread(s), random weights; the same images for every "
        "column, run in alternating order; median of the rounds.",
        "",
        *table(header, rows),
        "",
        '"Without the output" is the same graph with `class_maps` removed (a file exported before class maps '
        'existed); "not fetched" runs the new graph for `logits` and `attention` only, as `/classify` does unless '
        "asked for maps. ONNX Runtime computes every node of a graph whatever is fetched, so the output's product "
        "(7 x 7 x 2048 x 1000 multiply-adds for ResNet-50, about 2.4 % of the backbone's) is paid by every client.",
        "",
    ]


SECTIONS = (
    Section(
        "class_maps",
        "Class maps: what the output costs a client that does not fetch it",
        full={"threads": 1, "batch_sizes": (1, 8), "budget_s": 30.0},
        quick={"threads": 1, "batch_sizes": (1, 2), "budget_s": 0.2},
        run=lambda context: run(**context.budget),
        render=_render,
        reads=(),
    ),
)
