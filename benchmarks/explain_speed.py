"""Explained images per second: castream's ONNX model against gradient and perturbation methods on PyTorch.

python -m benchmarks explain_speed                          # ResNet-50 at 224 and the default ResNet-18 at 112
python -m benchmarks explain_speed --models resnet18 --budget-s 5

On the same backbone, weights (random: no model hub here, and speed does not depend on them) and images,
one image at a time (an explanation request), each method runs in turn:
- ``castream``: one ``session.run`` of the exported graph fetching logits, attention and class maps, then the
  top-1 class's map picked out (the class-agnostic map and a class-specific one, no gradients);
- pytorch-grad-cam's ``GradCAM``, ``GradCAMPlusPlus`` and ``ScoreCAM`` on the last stage (``layer4``) of the
  same CA model in PyTorch, for the top-1 class;
- Captum's ``IntegratedGradients`` with 50 steps (zero baseline, 10 steps per batch).
Each method explains images until ``--budget-s`` seconds have passed (at least one image); the ratio column
is castream's images per second over the method's. PyTorch and ONNX Runtime get the same thread count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks.sections import Section, table
from export.graph import export_graph
from export.sessions import make_session
from service.contract import ATTENTION, CLASS_MAPS, INPUT, LOGITS
from training.model import CAStreamNet, ModelConfig

log = logging.getLogger(__name__)

MODELS = {"resnet50": (224, 1000), "resnet18": (112, 10)}  # ImageNet-sized, and the default model's shape
METHODS = ("castream", "gradcam", "gradcam++", "scorecam", "integrated-gradients")
LABELS = {
    "castream": "castream ONNX (logits + attention + top-1 class map)",
    "gradcam": "pytorch-grad-cam GradCAM",
    "gradcam++": "pytorch-grad-cam GradCAM++",
    "scorecam": "pytorch-grad-cam ScoreCAM",
    "integrated-gradients": "Captum IntegratedGradients (50 steps)",
}
IG_STEPS, IG_BATCH = 50, 10


class Logits(nn.Module):
    """The CA model as the explanation libraries expect it: images in, logits out."""

    def __init__(self, model: CAStreamNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x, "ca").logits


def _explainers(model: CAStreamNet, image_size: int, threads: int) -> dict[str, Callable[[np.ndarray], Any]]:
    from captum.attr import IntegratedGradients
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    session = make_session(export_graph(model, "ca", image_size), threads)
    net = Logits(model).eval()
    layer = [model.backbone.net.layer4[-1]]
    cams = {"gradcam": GradCAM(net, layer), "gradcam++": GradCAMPlusPlus(net, layer), "scorecam": ScoreCAM(net, layer)}
    integrated = IntegratedGradients(net)

    def castream(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, attention, maps = session.run([LOGITS, ATTENTION, CLASS_MAPS], {INPUT: image[None]})
        return attention[0], maps[0, int(logits[0].argmax())]

    def top1(x: Tensor) -> int:
        with torch.no_grad():
            return int(net(x).argmax())

    def cam(name: str) -> Callable[[np.ndarray], np.ndarray]:
        def explain(image: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(image[None])
            return cams[name](input_tensor=x, targets=[ClassifierOutputTarget(top1(x))])

        return explain

    def integrated_gradients(image: np.ndarray) -> Tensor:
        x = torch.from_numpy(image[None])
        return integrated.attribute(x, target=top1(x), n_steps=IG_STEPS, internal_batch_size=IG_BATCH)

    return {"castream": castream, **{name: cam(name) for name in cams}, "integrated-gradients": integrated_gradients}


# Methods that run the network dozens to thousands of times per image: their first-run costs are amortised.
NO_WARM_UP = ("scorecam", "integrated-gradients")


def measure(
    explain: Callable[[np.ndarray], Any], images: np.ndarray, budget_s: float, method: str
) -> tuple[int, float]:
    """``(images explained, seconds)``: at least one image, then until ``budget_s`` or the images run out."""
    if method not in NO_WARM_UP:
        explain(images[0])  # warm-up: first runs allocate and pick kernels
    count, started = 0, time.perf_counter()
    while count == 0 or (count < len(images) and time.perf_counter() - started < budget_s):
        explain(images[count])
        count += 1
    return count, time.perf_counter() - started


def run(backbone: str, methods: tuple[str, ...], images: int, budget_s: float, threads: int) -> dict[str, Any]:
    image_size, classes = MODELS[backbone]
    torch.manual_seed(0)
    model = CAStreamNet(ModelConfig(backbone, classes)).eval()
    data = np.random.default_rng(0).standard_normal((images, 3, image_size, image_size), np.float32)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        explainers = _explainers(model, image_size, threads)
        speeds = {}
        for method in methods:
            speeds[method] = measure(explainers[method], data, budget_s, method)
            log.info("%s %s: %d images in %.1f s", backbone, method, *speeds[method])
    finally:
        torch.set_num_threads(previous)
    rate = {method: count / seconds for method, (count, seconds) in speeds.items()}
    rows = [{"method": method, "images": count, "seconds": seconds, "images_per_second": rate[method],
             "castream_speedup": rate["castream"] / rate[method] if "castream" in rate else None}
            for method, (count, seconds) in speeds.items()]  # fmt: skip
    return {"backbone": backbone, "image_size": image_size, "classes": classes, "threads": threads, "rows": rows}


def run_all(
    models: tuple[str, ...] = tuple(MODELS), methods: tuple[str, ...] = METHODS, images: int = 16,
    budget_s: float = 10.0, threads: int = 1,
) -> list[dict[str, Any]]:  # fmt: skip
    """Every method on every model: the record of the section (castream first, every ratio is to it)."""
    if "castream" not in methods:
        raise ValueError(f"castream must be among the methods: every ratio is to it, got {methods}")
    return [run(name, tuple(methods), images, budget_s, threads) for name in models]


def _times(row: dict[str, Any]) -> str:
    speedup = row["castream_speedup"]
    return "1 (reference)" if row["method"] == "castream" else f"{speedup:,.{0 if speedup >= 100 else 1}f}"


def _render(results: list[dict[str, Any]], report: dict[str, Any]) -> list[str]:
    rows = [
        [f"{result['backbone']} {result['image_size']} px", LABELS[row["method"]], f"{row['images_per_second']:.3g}",
         _times(row), str(row["images"])]
        for result in results for row in result["rows"]
    ]  # fmt: skip
    threads = results[0]["threads"] if results else 0
    return [
        f"One image at a time, {threads} thread(s) for PyTorch and ONNX Runtime; the same backbone, random weights "
        "and images for every method. castream: one `session.run` of the exported graph for logits, attention and "
        "all class maps, then the top-1 class's map; the others explain the top-1 class on the same CA model in "
        "PyTorch (`layer4` for the CAM methods; Integrated Gradients with 50 steps, zero baseline, 10 steps a batch).",
        "",
        *table(["model", "method", "explained images/s", "castream is ... x as fast", "images timed"], rows),
        "",
        "Score-CAM runs the network once per channel of `layer4` (2048 for ResNet-50, 512 for ResNet-18), Integrated "
        "Gradients 50 forward and backward passes, Grad-CAM one of each; castream one forward pass, and its maps "
        "come with it. The methods run one after another, not interleaved: the ratios are approximate on a shared "
        "machine, the order of magnitude is the finding.",
        "",
    ]


SECTIONS = (
    Section(
        "explain_speed",
        "Explanations per second: castream against gradient and perturbation methods",
        full={"models": tuple(MODELS), "methods": METHODS, "images": 16, "budget_s": 10.0, "threads": 1},
        quick={"models": ("resnet18",), "methods": ("castream", "gradcam"), "images": 1, "budget_s": 0.1, "threads": 1},
        run=lambda context: run_all(**{k: tuple(v) if isinstance(v, list) else v for k, v in context.budget.items()}),
        render=_render,
        reads=(),
    ),
)
