"""What explanations cost. ``explain_speed``: explained images per second, one at a time, castream's graph
against Grad-CAM, Score-CAM and Integrated Gradients; ``insertion_deletion``: the insertion and deletion scores'
throughput, batched (as is, and with BatchNorm folded as the evaluation runs it) against the loop scoring one
perturbed image per pass. Random weights: no model hub here, and a pass costs the same whatever the weights."""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import get_model

from benchmarks.sections import Aim, Section, body, dig, fmt, table
from benchmarks.speed import random_images, random_model
from export.graph import export_graph
from export.sessions import make_session
from interpret import metrics
from service.contract import ATTENTION, CLASS_MAPS, INPUT, LOGITS
from training import synthetic
from training.backbones import fold_batch_norm
from training.data import Preprocessing
from training.families import family_of

log = logging.getLogger(__name__)

# ImageNet-sized, and the default model's input (at output stride 32)
MODELS = {"resnet50": (224, 1000), "resnet18": (112, 10)}
LABELS = {"castream": "castream ONNX (logits + attention + top-1 class map)", "gradcam": "pytorch-grad-cam GradCAM",
          "gradcam++": "pytorch-grad-cam GradCAM++", "scorecam": "pytorch-grad-cam ScoreCAM",
          "integrated-gradients": "Captum IntegratedGradients (50 steps)"}  # fmt: skip
NO_WARM_UP = ("scorecam", "integrated-gradients")  # dozens to thousands of passes an image amortise the first one
# Score-CAM runs the network once per channel of the last stage: on ResNet-50 one image takes minutes at one thread,
# a fifth of `make bench`, for a ratio in the thousands that ResNet-18's hundreds already make plain.
SCORECAM_MODELS = ("resnet18",)


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
    log.info("%s: %d images in %.1f s", method, count, seconds)
    return {"method": method, "images": count, "seconds": seconds, "images_per_second": count / seconds}


def _explained(backbone: str, methods: tuple[str, ...], images: int, budget_s: float, threads: int) -> dict[str, Any]:
    """One model's record: each of ``methods`` on the same random CA model and images."""
    from captum.attr import IntegratedGradients
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    image_size, classes = MODELS[backbone]
    model = random_model(backbone, classes)
    session = make_session(export_graph(model, "ca", image_size), threads)
    net, layer = Logits(model).eval(), [model.backbone.cam_layer]  # the last stage
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


def explain_speed(
    models: tuple[str, ...] = tuple(MODELS), methods: tuple[str, ...] = tuple(LABELS), images: int = 16,
    budget_s: float = 10.0, threads: int = 1, scorecam_models: tuple[str, ...] = SCORECAM_MODELS,
) -> list[dict[str, Any]]:  # fmt: skip
    """Every method on every model (Score-CAM only on ``scorecam_models``), with ``threads`` threads for PyTorch and
    ONNX Runtime; every ratio is castream's."""
    if "castream" not in methods:
        raise ValueError(f"castream must be among the methods: every ratio is to it, got {methods}")
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown models {unknown}; expected some of {sorted(MODELS)}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        records = []
        for backbone in models:
            timed = tuple(m for m in methods if m != "scorecam" or backbone in scorecam_models)
            record = _explained(backbone, timed, images, budget_s, threads)
            records.append(record | {"not_timed": [m for m in methods if m not in timed]})
        return records
    finally:
        torch.set_num_threads(previous)


def _times(row: dict[str, Any]) -> str:
    speedup = row["castream_speedup"]
    return "1 (reference)" if row["method"] == "castream" else f"{speedup:,.{0 if speedup >= 100 else 1}f}"


def _render_explain(results: list[dict[str, Any]], report: dict[str, Any]) -> list[str]:
    layers = " / ".join(dict.fromkeys(f"`{family_of(result['backbone']).cam_layer}`" for result in results))
    layers = layers or "the last stage"
    rows = [[f"{result['backbone']} {result['image_size']} px", LABELS[row["method"]],
             f"{row['images_per_second']:.3g}", _times(row), str(row["images"])]
            for result in results for row in result["rows"]]  # fmt: skip
    return body(
        f"One image at a time, {results[0]['threads'] if results else 0} thread(s) for PyTorch and ONNX Runtime, the "
        "same backbone, random weights and images for every method. castream: one `session.run` for logits, attention "
        "and all class maps, then the top-1 class's map; the others explain the top-1 class on the same CA model in "
        f"PyTorch ({layers} for the CAM methods; Integrated Gradients: 50 steps, zero baseline, 10 steps a batch).",
        table(["model", "method", "explained images/s", "castream is ... x as fast", "images timed"], rows),
        f"Score-CAM runs the network once per channel of {layers} (2048 for ResNet-50, 512 for ResNet-18), Integrated "
        "Gradients 50 forward and backward passes, Grad-CAM one of each; castream one forward pass, and its maps "
        "come with it. The methods run one after another, not interleaved: the ratios are approximate on a shared "
        "machine, the order of magnitude is the finding." + _not_timed(results),
    )


def _not_timed(results: list[dict[str, Any]]) -> str:
    skipped = [
        f"{LABELS[method]} on {result['backbone']}" for result in results for method in result.get("not_timed", ())
    ]
    if not skipped:
        return ""
    return (
        f" Not timed in this run: {', '.join(skipped)} (Score-CAM is timed only on the models given to "
        "`--scorecam-models`)."
    )


def _inputs(count: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic images (normalised, channels-last) and smooth CAM-like saliency maps (7 x 7 upsampled)."""
    split = synthetic.generate(synthetic.SyntheticSpec(size=size, count=count, seed=seed))
    images = Preprocessing(resize=size, crop=size).normalize(torch.from_numpy(split.images))  # ImageNet statistics
    coarse = torch.rand(count, 1, 7, 7, generator=torch.Generator().manual_seed(seed))
    return images, F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


@torch.no_grad()
def _score(model: torch.nn.Module, batch: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    return model(batch).softmax(1).gather(1, classes[:, None])[:, 0]


def insertion_deletion(
    backbone: str = "resnet50", size: int = 224, images: int = 4, naive_images: int = 2, batch_size: int = 32,
    pixels_per_step: int = 0, seed: int = 0, tolerance: float = 1e-4,
) -> dict[str, Any]:  # fmt: skip
    """The loop on ``naive_images``, both batched variants on ``images``; ``pixels_per_step`` 0: the default."""
    if images < 1 or naive_images < 1 or naive_images > images:
        raise ValueError(f"need 1 <= naive_images <= images, got naive_images={naive_images}, images={images}")
    torch.manual_seed(seed)
    model = get_model(backbone, weights=None).eval().requires_grad_(False).to(memory_format=torch.channels_last)
    folded = copy.deepcopy(model)
    fold_batch_norm(folded)  # in place
    x, saliency = _inputs(images, size, seed)
    classes = model(x[:1]).argmax(1).repeat(images)  # the same class throughout keeps probabilities comparable
    pace = pixels_per_step or metrics.default_pixels_per_step(size, size)
    for net in (model, folded):  # warm-up: both paths' primitives are created before timing
        _score(net, x[:1], classes[:1])
        _score(net, x[:1].expand(batch_size, -1, -1, -1), classes[:1].expand(batch_size))
    started = time.perf_counter()
    reference = [metrics.reference_insertion_deletion(partial(_score, model), x[i], classes[i], saliency[i], pace)
                 for i in range(naive_images)]  # fmt: skip
    naive_rate, rates, difference = naive_images / (time.perf_counter() - started), [], 0.0
    expected = torch.stack([torch.stack(pair) for pair in reference])  # (image, insertion or deletion, step)
    for net in (model, folded):
        started = time.perf_counter()
        curves = metrics.insertion_deletion(partial(_score, net), x, classes, saliency, pace, batch_size=batch_size)
        rates.append(images / (time.perf_counter() - started))
        log.info("insertion and deletion, batched%s: %.2f images/s", " (folded)" if net is folded else "", rates[-1])
        difference = max(difference, (torch.stack(curves, 1)[:naive_images] - expected).abs().max().item())
    return {"backbone": backbone, "size": size, "steps": -(-size * size // pace), "pixels_per_step": pace,
            "batch_size": batch_size, "threads": torch.get_num_threads(), "images": images,
            "naive_images": naive_images, "naive_images_per_second": naive_rate,  # one image, one step, one pass a time
            "batched_images_per_second": rates[0], "folded_images_per_second": rates[1],  # BatchNorm folded or not
            "batching_speedup": rates[0] / naive_rate, "speedup": rates[1] / naive_rate,
            "max_abs_difference": difference, "equal": difference <= tolerance,
            "load_average": os.getloadavg()[0]}  # fmt: skip


def _render_insertion_deletion(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    rows = [["one image, one step per forward pass", fmt(r["naive_images_per_second"], 3), "1.00x"],
            ["batched", fmt(r["batched_images_per_second"], 3), f"{r['batching_speedup']:.2f}x"],
            ["batched, BatchNorm folded", fmt(r["folded_images_per_second"], 3),
             f"**{r['speedup']:.2f}x**"]]  # fmt: skip
    return body(
        f"{r['backbone']} at {r['size']} px, {r['steps']} steps of {r['pixels_per_step']} pixels, "
        f"{r['threads']} threads; batched: {r['images']} images, {r['batch_size']} perturbed images per pass; loop: "
        f"{r['naive_images']} image(s).",
        table(["", "images/s", "speed-up"], rows),
        f"Curves equal: {'yes' if r['equal'] else '**no**'} (largest difference {r['max_abs_difference']:.1e}).",
    )


SECTIONS = (
    Section("explain_speed", "Explanations per second: castream against gradient and perturbation methods",
            explain_speed, {"models": ("resnet18",), "methods": ("castream", "gradcam"), "images": 1, "budget_s": 0.1,
                            "threads": 1, "scorecam_models": SCORECAM_MODELS}, _render_explain),
    Section("insertion_deletion", "Insertion and deletion: batched against one step at a time", insertion_deletion,
            {"backbone": "resnet18", "size": 32, "images": 2, "naive_images": 2, "batch_size": 8},
            _render_insertion_deletion, lambda r: [Aim("insertion + deletion, batched / one step at a time",
                                                       dig(r, "speedup"), 5.0, True, "x")]),
)  # fmt: skip
