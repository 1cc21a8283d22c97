"""What the model costs to run and to train, on random weights (no model hub here, and a pass costs the same
whatever the weights), measured side by side. In ONNX Runtime: ``onnx_speed``, one model's ``fp32-gap`` (global
average pooling), ``fp32-ca`` (the CA stream, as served) and ``int8-ca`` (quantised on random images: fine for
timing, not for accuracy); ``int8``, the served model against its int8 export, with the agreement the export
measured before it wrote the file; ``class_maps``, what that output costs a client, fetched or not. In PyTorch:
``train_speed``, a stream training step against the frozen model's forward pass."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from benchmarks.harness import interleaved, model_inputs, summarise
from benchmarks.sections import Aim, Section, body, dig, fmt, pct, table
from export.agreement import Thresholds
from export.graph import export_graph
from export.quantize import quantize_int8
from export.sessions import make_session
from export.timing import time_sessions
from service.contract import ATTENTION, CLASS_MAPS, LOGITS
from service.model import load_model
from training.engine import Objective, StageSettings, TrainingContext, make_optimizer, trainable_parameters
from training.model import CAStreamNet, ModelConfig
from training.precision import describe

GAP, CA, INT8 = "fp32-gap", "fp32-ca", "int8-ca"
CA_AIM, INT8_AIM = 1.03, 2.0  # CA / GAP latency at most, int8 / fp32 throughput at least


def random_model(backbone: str, classes: int) -> CAStreamNet:
    """A CA model with random weights: no model hub here, and a pass costs the same whatever the weights."""
    torch.manual_seed(0)
    return CAStreamNet(ModelConfig(backbone, classes)).eval()


def random_images(count: int, image_size: int, seed: int = 0) -> np.ndarray:  # the statistics of normalised pixels
    return np.random.default_rng(seed).standard_normal((count, 3, image_size, image_size), dtype=np.float32)


def graph_speed(
    backbone: str = "resnet50", image_size: int = 224, batch_size: int = 8, threads: int = 1, budget_s: float = 75.0
) -> dict[str, Any]:
    """The three graphs of a random ``backbone`` (1000 classes), timed by :func:`time_graphs` (not counting exports)."""
    model = random_model(backbone, 1000)
    gap, ca = (export_graph(model, pooling, image_size) for pooling in ("gap", "ca"))
    graphs = {GAP: gap, CA: ca, INT8: quantize_int8(ca, random_images(8, image_size))}
    return time_graphs(graphs, image_size, batch_size, threads, budget_s, backbone)


def time_graphs(
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


def _render_speed(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    timings = r["timings"]
    batches = [batch.replace("batch", "batch ") for batch in timings]
    rows = [[graph, *(fmt(timings[batch][graph][key]) for batch in timings for key in ("median_ms", "images_per_s"))]
            for graph in (GAP, CA, INT8)]  # fmt: skip
    return body(
        f"{r['backbone']} at {r['image_size']} x {r['image_size']} with random weights (speed does not depend on "
        f"them), {r['threads']} thread(s); the graphs alternate round by round on the same inputs. Ratios are the "
        "median of per-round ratios.",
        table(["graph", *(f"{batch}: {unit}" for batch in batches for unit in ("ms", "images/s"))], rows),
        [f"- CA / GAP latency at batch 1: **{r['ca_over_gap_latency']:.3f}** (aim <= {CA_AIM:g}); "
         f"CA / GAP time at {batches[-1]}: {r['ca_over_gap_batch_throughput']:.3f}.",
         f"- int8 / fp32 throughput of the CA graph at {batches[-1]}: **{r['int8_over_fp32_throughput']:.2f}x** "
         f"(aim >= {INT8_AIM:g}); at batch 1: {r['int8_over_fp32_latency']:.2f}x."],
    )  # fmt: skip


def _aims_speed(r: dict[str, Any] | None) -> list[Aim]:
    return [
        Aim("CA / GAP latency, ResNet-50 at 224, batch 1", dig(r, "ca_over_gap_latency"), CA_AIM, False),
        Aim("int8 / fp32 throughput, ResNet-50 at 224", dig(r, "int8_over_fp32_throughput"), INT8_AIM, True),
    ]


INT8_AIMS = {"top1": "top-1 agreement with fp32", "peak": "attention-peak agreement",
             "correlation": "attention correlation"}  # fmt: skip


def int8_verification(path: Path) -> dict[str, Any]:
    """The ``int8`` entry of an int8 export's ``verification`` metadata (agreement, speed-up, thresholds)."""
    model = load_model(path, ["cpu"])
    if (precision := model.info.precision) != "int8":
        raise ValueError(f"{str(path)!r} is a {precision} model; expected an int8 export (export.to_onnx --int8)")
    checks = json.loads(model.session.get_modelmeta().custom_metadata_map.get("verification", "{}")).get("int8")
    if not checks:
        raise ValueError(f"{str(path)!r} records no int8 checks in its verification metadata; re-export it")
    return checks


def compare(
    model: Path, int8_model: Path, batch_size: int = 8, threads: int = 1, budget_s: float = 15.0
) -> dict[str, Any]:
    """The agreement recorded at export; latency and throughput of both on the same preprocessed images, in
    alternating rounds, at batch 1 (a third of ``budget_s``) and at ``batch_size`` (the rest)."""
    checks = int8_verification(int8_model)
    files = {"fp32": model, "int8": int8_model}
    sessions = {name: make_session(path.read_bytes(), threads) for name, path in files.items()}
    images = model_inputs(model, batch_size)
    timings = [time_sessions(sessions, images[:1], budget_s / 3), time_sessions(sessions, images, budget_s * 2 / 3)]
    return {
        "threads": threads,
        "agreement": {key: checks.get(key) for key in ("images", "top1", "peak", "correlation")},
        "accuracy": {"fp32": checks.get("reference_accuracy"), "int8": checks.get("candidate_accuracy")},
        "thresholds": checks.get("thresholds"), "speedup_at_export": checks.get("speedup"),
        "timings": [{"batch_size": t.batch_size, "rounds": t.rounds, "fp32_ms": t.median_ms("fp32"),
                     "int8_ms": t.median_ms("int8"), "fp32_images_per_second": t.images_per_second("fp32"),
                     "int8_images_per_second": t.images_per_second("int8"), "int8_over_fp32": t.ratio("fp32", "int8")}
                    for t in timings],
    }  # fmt: skip


def _render_int8(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    agreement = r["agreement"]
    rows = [[str(t["batch_size"]), fmt(t["fp32_ms"], 2), fmt(t["int8_ms"], 2), fmt(t["fp32_images_per_second"]),
             fmt(t["int8_images_per_second"]), f"**{t['int8_over_fp32']:.2f}x**"] for t in r["timings"]]  # fmt: skip
    return body(
        f"Agreement as measured by `python -m export.to_onnx --int8` on {agreement['images']} validation images "
        f"before it wrote the file: top-1 {pct(agreement['top1'])}, attention peak {pct(agreement['peak'])}, "
        f"mean attention correlation {fmt(agreement['correlation'], 4)} (accuracy fp32 {pct(r['accuracy']['fp32'])}, "
        f"int8 {pct(r['accuracy']['int8'])}). Speed timed in this run, {r['threads']} thread(s):",
        table(["batch", "fp32 ms", "int8 ms", "fp32 images/s", "int8 images/s", "int8 / fp32 throughput"], rows),
    )


def _aims_int8(r: dict[str, Any] | None) -> list[Aim]:
    limits = Thresholds()
    return [Aim(f"int8 {name} (served model)", dig(r, "agreement", key), getattr(limits, key), True)
            for key, name in INT8_AIMS.items()]  # fmt: skip


WITHOUT, UNFETCHED, FETCHED = "without", "unfetched", "fetched"
# The default model's input (at output stride 32), and an ImageNet one.
CLASS_MAP_MODELS = (("resnet18", 112, 10), ("resnet50", 224, 1000))


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


def class_map_cost(threads: int = 1, batch_sizes: tuple[int, ...] = (1, 8), budget_s: float = 30.0) -> dict[str, Any]:
    """Every model of :data:`MODELS` at each batch size, for ``budget_s`` per model."""
    models = []
    for backbone, image_size, classes in CLASS_MAP_MODELS:
        proto = export_graph(random_model(backbone, classes), "ca", image_size)
        full, plain = make_session(proto, threads), make_session(without_class_maps(proto), threads)
        sessions = {WITHOUT: Fetching(plain, [LOGITS, ATTENTION]), UNFETCHED: Fetching(full, [LOGITS, ATTENTION]),
                    FETCHED: Fetching(full, [LOGITS, ATTENTION, CLASS_MAPS])}  # fmt: skip
        images = random_images(max(batch_sizes), image_size)
        timed = [time_sessions(sessions, images[:size], budget_s / len(batch_sizes)) for size in batch_sizes]
        batches = [{"batch_size": t.batch_size, "rounds": t.rounds, "ms": {n: t.median_ms(n) for n in t.seconds},
                    "unfetched_over_without": t.ratio(UNFETCHED, WITHOUT),
                    "fetched_over_unfetched": t.ratio(FETCHED, UNFETCHED)} for t in timed]  # fmt: skip
        models.append({"backbone": backbone, "image_size": image_size, "classes": classes, "batches": batches})
    return {"threads": threads, "models": models}


def _render_class_maps(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    rows = [[f"{m['backbone']} {m['image_size']} px, {m['classes']} classes", str(row["batch_size"]),
             *(f"{row['ms'][name]:.2f}" for name in (WITHOUT, UNFETCHED, FETCHED)),
             f"{row['unfetched_over_without']:.3f}", f"{row['fetched_over_unfetched']:.3f}"]
            for m in r["models"] for row in m["batches"]]  # fmt: skip
    return body(
        f"`session.run` latency, {r['threads']} ONNX Runtime thread(s), random weights; the same images for every "
        "column, run in alternating order; median of the rounds.",
        table(["model", "batch", "without the output (ms)", "output not fetched (ms)", "fetched (ms)",
                "not fetched / without", "fetched / not fetched"], rows),
        '"Without the output" is the same graph with `class_maps` removed (a file exported before class maps '
        'existed); "not fetched" runs the new graph for `logits` and `attention` only, as `/classify` does unless '
        "asked for maps. ONNX Runtime computes every node of a graph whatever is fetched, so the output's product "
        "(7 x 7 x 2048 x 1000 multiply-adds for ResNet-50, about 2.4 % of the backbone's) is paid by every client.",
    )  # fmt: skip


TRAIN_AIM = 0.8  # training images/s over forward images/s, at least
TRAIN_ROWS = {"forward": "frozen model, forward only (`no_grad`)",
              "train": "stream training step (forward, backward, SGD)"}  # fmt: skip


def steps(model: CAStreamNet, runtime: TrainingContext, images: Tensor, labels: Tensor) -> tuple[Callable, Callable]:
    """``(forward, train_step)`` on one batch, set up as ``training.engine.train_stage`` sets up the stream stage."""
    optimizer = make_optimizer(trainable_parameters(model, "stream"), StageSettings(epochs=1, lr=0.01))
    objective = Objective(model, "stream", runtime)

    def forward() -> None:  # the frozen model with its GAP head: what the baseline costs to run
        with torch.no_grad(), runtime.autocast():
            model(images, pooling="gap")

    def train_step() -> None:  # the body of train_stage's loop: forward, cross-entropy, backward, optimiser step
        loss = nn.functional.cross_entropy(objective(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return forward, train_step


def train_speed(
    backbone: str = "resnet50", image_size: int = 224, batch_size: int = 16, budget_s: float = 45.0,
    precision: str = "auto", num_classes: int = 1000,
) -> dict[str, Any]:  # fmt: skip
    """Both steps on one random batch in alternating rounds, in ``precision`` as training resolves it on this CPU."""
    if budget_s < 0 or batch_size < 1:
        raise ValueError(f"need budget_s >= 0 and batch_size >= 1, got {budget_s!r} and {batch_size!r}")
    model = random_model(backbone, num_classes).train()
    images, labels = torch.randn(batch_size, 3, image_size, image_size), torch.randint(0, num_classes, (batch_size,))
    context = TrainingContext(device=torch.device("cpu"), precision=precision, progress=False)
    forward, train_step = steps(model, context, images, labels)
    forward(), train_step()  # first calls allocate and pick kernels
    seconds = interleaved({"forward": forward, "train": train_step}, budget_s)
    return {"backbone": backbone, "image_size": image_size, "batch_size": batch_size, "rounds": len(seconds["forward"]),
            "threads": torch.get_num_threads(), "precision": describe(context.dtype),  # as resolved: fp32, bf16, fp16
            **{step: summarise(values, batch_size) for step, values in seconds.items()},  # per batch and images/s
            "ratio": float(np.median(seconds["forward"] / seconds["train"])), "aim": TRAIN_AIM}  # fmt: skip


def _render_train(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    rows = [[label, fmt(r[step]["p50_ms"]), fmt(r[step]["images_per_second"], 2)] for step, label in TRAIN_ROWS.items()]
    policy = "float32" if r["precision"] == "fp32" else r["precision"] + " autocast"
    return body(
        f"{r['backbone']} at {r['image_size']} px, batch {r['batch_size']}, {r['threads']} threads, {policy} (the "
        f"training default here), {r['rounds']} alternating rounds.",
        table(["", "ms per batch", "images/s"], rows),
        f"Training throughput / forward throughput: **{r['ratio']:.2f}** (aim >= {r['aim']}).",
    )


SECTIONS = (
    Section("int8", "int8 against fp32 on the served model", compare, {"budget_s": 0.5}, _render_int8, _aims_int8),
    Section("onnx_speed", "CA against GAP, int8 against fp32 (ONNX Runtime)", graph_speed,
            {"backbone": "resnet18", "image_size": 64, "budget_s": 1.0}, _render_speed, _aims_speed),
    Section("class_maps", "Class maps: what the output costs a client that does not fetch it", class_map_cost,
            {"threads": 1, "batch_sizes": (1, 2), "budget_s": 0.2}, _render_class_maps),
    Section("train_speed", "Stream training against the frozen forward pass", train_speed,
            {"backbone": "resnet18", "image_size": 64, "batch_size": 4, "budget_s": 0.5}, _render_train,
            lambda r: [Aim("stream training / frozen forward throughput", dig(r, "ratio"), TRAIN_AIM, True)]),
)  # fmt: skip
