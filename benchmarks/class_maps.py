"""What the ``class_maps`` output costs a client: ``session.run`` latency of the graph without it, with it but not
fetched (as ``/classify`` runs it), and fetched, side by side, for the default model's shape and ResNet-50 at 224."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from benchmarks.onnx_speed import random_images, random_model
from benchmarks.sections import Section, table
from export.graph import export_graph
from export.sessions import make_session
from export.timing import Timings, time_sessions
from service.contract import ATTENTION, CLASS_MAPS, LOGITS

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
    plain = onnx.ModelProto.FromString(proto.SerializeToString())
    plain.graph.output.remove(next(value for value in plain.graph.output if value.name == CLASS_MAPS))
    return plain


def cost(t: Timings) -> dict[str, Any]:
    return {"batch_size": t.batch_size, "rounds": t.rounds, "ms": {name: t.median_ms(name) for name in t.seconds},
            "unfetched_over_without": t.ratio(UNFETCHED, WITHOUT),
            "fetched_over_unfetched": t.ratio(FETCHED, UNFETCHED)}  # fmt: skip


def run(threads: int = 1, batch_sizes: tuple[int, ...] = (1, 8), budget_s: float = 30.0) -> dict[str, Any]:
    """Every model of :data:`MODELS` at each batch size, for ``budget_s`` per model."""
    models = []
    for backbone, image_size, classes in MODELS:
        proto = export_graph(random_model(backbone, classes), "ca", image_size)
        full, plain = make_session(proto, threads), make_session(without_class_maps(proto), threads)
        sessions = {WITHOUT: Fetching(plain, [LOGITS, ATTENTION]), UNFETCHED: Fetching(full, [LOGITS, ATTENTION]),
                    FETCHED: Fetching(full, [LOGITS, ATTENTION, CLASS_MAPS])}  # fmt: skip
        images = random_images(max(batch_sizes), image_size)
        batches = [cost(time_sessions(sessions, images[:size], budget_s / len(batch_sizes))) for size in batch_sizes]
        models.append({"backbone": backbone, "image_size": image_size, "classes": classes, "batches": batches})
    return {"threads": threads, "models": models}


def _render(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    rows = [[f"{m['backbone']} {m['image_size']} px, {m['classes']} classes", str(row["batch_size"]),
             *(f"{row['ms'][name]:.2f}" for name in (WITHOUT, UNFETCHED, FETCHED)),
             f"{row['unfetched_over_without']:.3f}", f"{row['fetched_over_unfetched']:.3f}"]
            for m in r["models"] for row in m["batches"]]  # fmt: skip
    return [
        f"`session.run` latency, {r['threads']} ONNX Runtime thread(s), random weights; the same images for every "
        "column, run in alternating order; median of the rounds.",
        "",
        *table(["model", "batch", "without the output (ms)", "output not fetched (ms)", "fetched (ms)",
                "not fetched / without", "fetched / not fetched"], rows),
        "",
        '"Without the output" is the same graph with `class_maps` removed (a file exported before class maps '
        'existed); "not fetched" runs the new graph for `logits` and `attention` only, as `/classify` does unless '
        "asked for maps. ONNX Runtime computes every node of a graph whatever is fetched, so the output's product "
        "(7 x 7 x 2048 x 1000 multiply-adds for ResNet-50, about 2.4 % of the backbone's) is paid by every client.",
        "",
    ]  # fmt: skip


SECTIONS = (Section("class_maps", "Class maps: what the output costs a client that does not fetch it", run,
                    {"threads": 1, "batch_sizes": (1, 2), "budget_s": 0.2}, _render),)  # fmt: skip
