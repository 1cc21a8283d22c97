"""Explained images per second, one at a time: castream's graph against Grad-CAM, Score-CAM and Integrated Gradients."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.onnx_speed import random_images, random_model
from benchmarks.sections import Section, table
from export.graph import export_graph
from export.sessions import make_session
from service.contract import ATTENTION, CLASS_MAPS, INPUT, LOGITS

MODELS = {"resnet50": (224, 1000), "resnet18": (112, 10)}  # ImageNet-sized, and the default model's shape
LABELS = {"castream": "castream ONNX (logits + attention + top-1 class map)", "gradcam": "pytorch-grad-cam GradCAM",
          "gradcam++": "pytorch-grad-cam GradCAM++", "scorecam": "pytorch-grad-cam ScoreCAM",
          "integrated-gradients": "Captum IntegratedGradients (50 steps)"}  # fmt: skip
NO_WARM_UP = ("scorecam", "integrated-gradients")  # dozens to thousands of passes an image amortise the first one


class Logits(nn.Sequential):  # the CA model (its one module) as explanation libraries expect: images in, logits out
    def forward(self, x: Tensor) -> Tensor:
        return self[0](x, "ca").logits


def _time(explain: Callable[[Tensor], Any], images: Tensor, budget_s: float, method: str) -> dict[str, Any]:
    """One method's row: the top-1 class of one image after another, at least one, until ``budget_s`` or the last."""
    if method not in NO_WARM_UP:
        explain(images[:1])  # warm-up: first runs allocate and pick kernels
    count, started = 0, time.perf_counter()
    while count == 0 or (count < len(images) and time.perf_counter() - started < budget_s):
        explain(images[count : count + 1])
        count += 1
    seconds = time.perf_counter() - started
    return {"method": method, "images": count, "seconds": seconds, "images_per_second": count / seconds}


def _explained(backbone: str, methods: tuple[str, ...], images: int, budget_s: float, threads: int) -> dict[str, Any]:
    """One model's record: every method on the same random CA model and images."""
    from captum.attr import IntegratedGradients
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    image_size, classes = MODELS[backbone]
    model = random_model(backbone, classes)
    session = make_session(export_graph(model, "ca", image_size), threads)
    net, layer = Logits(model).eval(), [model.backbone.net.layer4[-1]]
    cams = {"gradcam": GradCAM(net, layer), "gradcam++": GradCAMPlusPlus(net, layer), "scorecam": ScoreCAM(net, layer)}
    ig = IntegratedGradients(net)  # 50 steps from a zero baseline, 10 a batch

    def castream(x: Tensor) -> tuple[Any, Any]:
        logits, attention, maps = session.run([LOGITS, ATTENTION, CLASS_MAPS], {INPUT: x.numpy()})
        return attention[0], maps[0, int(logits[0].argmax())]

    def top1(x: Tensor) -> int:
        with torch.no_grad():
            return int(net(x).argmax())

    explainers = {name: lambda x, cam=cam: cam(input_tensor=x, targets=[ClassifierOutputTarget(top1(x))])
                  for name, cam in cams.items()}  # fmt: skip
    explainers["castream"] = castream
    explainers["integrated-gradients"] = lambda x: ig.attribute(x, target=top1(x), n_steps=50, internal_batch_size=10)
    data = torch.from_numpy(random_images(images, image_size))
    rows = {method: _time(explainers[method], data, budget_s, method) for method in methods}
    for row in rows.values():
        row["castream_speedup"] = rows["castream"]["images_per_second"] / row["images_per_second"]
    return {"backbone": backbone, "image_size": image_size, "classes": classes, "threads": threads,
            "rows": list(rows.values())}  # fmt: skip


def run(models: tuple[str, ...] = tuple(MODELS), methods: tuple[str, ...] = tuple(LABELS), images: int = 16,
        budget_s: float = 10.0, threads: int = 1) -> list[dict[str, Any]]:  # fmt: skip
    """Every method on every model, with ``threads`` threads for PyTorch and ONNX Runtime; every ratio is castream's."""
    if "castream" not in methods:
        raise ValueError(f"castream must be among the methods: every ratio is to it, got {methods}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return [_explained(backbone, methods, images, budget_s, threads) for backbone in models]
    finally:
        torch.set_num_threads(previous)


def _times(row: dict[str, Any]) -> str:
    speedup = row["castream_speedup"]
    return "1 (reference)" if row["method"] == "castream" else f"{speedup:,.{0 if speedup >= 100 else 1}f}"


def _render(results: list[dict[str, Any]], report: dict[str, Any]) -> list[str]:
    rows = [[f"{result['backbone']} {result['image_size']} px", LABELS[row["method"]],
             f"{row['images_per_second']:.3g}", _times(row), str(row["images"])]
            for result in results for row in result["rows"]]  # fmt: skip
    return [
        f"One image at a time, {results[0]['threads'] if results else 0} thread(s) for PyTorch and ONNX Runtime, the "
        "same backbone, random weights and images for every method. castream: one `session.run` for logits, attention "
        "and all class maps, then the top-1 class's map; the others explain the top-1 class on the same CA model in "
        "PyTorch (`layer4` for the CAM methods; Integrated Gradients: 50 steps, zero baseline, 10 steps a batch).",
        "",
        *table(["model", "method", "explained images/s", "castream is ... x as fast", "images timed"], rows),
        "",
        "Score-CAM runs the network once per channel of `layer4` (2048 for ResNet-50, 512 for ResNet-18), Integrated "
        "Gradients 50 forward and backward passes, Grad-CAM one of each; castream one forward pass, and its maps "
        "come with it. The methods run one after another, not interleaved: the ratios are approximate on a shared "
        "machine, the order of magnitude is the finding.",
        "",
    ]


SECTIONS = (Section("explain_speed", "Explanations per second: castream against gradient and perturbation methods", run,
                    {"models": ("resnet18",), "methods": ("castream", "gradcam"), "images": 1, "budget_s": 0.1,
                     "threads": 1}, _render),)  # fmt: skip
