"""One training run, start to finish: resolve weights and data, plan the stages, train, record.

The run folder gets ``config.json`` (the resolved configuration and git revision) at the start,
``castream.pt`` after every epoch (atomically), and ``metrics.json`` at the end.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from service.contract import VERSION
from training import checkpoint, precision, recipes, weights
from training.backbones import BACKBONES
from training.data import DEFAULT_CACHE, Batches, Data, DataConfig, Preprocessing, load_data, preprocessing_for
from training.engine import (
    StageSettings,
    TrainingContext,
    abandon_distributed,
    save_checkpoint,
    setup_distributed,
    teardown_distributed,
    top1,
    train_stage,
)
from training.families import check_output_stride, family_of
from training.files import write_text
from training.model import CAStreamNet, ModelConfig
from training.options import option
from training.precision import POLICIES
from training.recipes import DEFAULT_RECIPE, OPTIMIZERS, RECIPES
from training.revision import git_revision

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "castream.pt"
BASELINE_MOMENTUM = 0.9  # SGD's momentum for the baseline (AdamW keeps its own betas)
BASELINE_WARMUP_EPOCHS = 0.3  # the baseline's learning rate ramps up over this share of an epoch


@dataclass
class FitOptions:
    """The training command's options (``python -m training.fit --help`` lists them from these fields)."""

    backbone: str = option("resnet18", "torchvision backbone", choices=BACKBONES)
    weights: str | None = option(
        None,
        "torchvision weights name (IMAGENET1K_V2...), a state-dict file or a castream checkpoint; "
        "default: random initialisation",
    )
    data: str | None = option(None, "ImageFolder root with train/ and val/; default: synthetic data")
    image_size: int | None = option(None, "crop size (default 224, or 112 for the synthetic data)", minimum=1)
    output_stride: int = option(
        32,
        "the last feature map's cell in pixels: 32 (the backbone as built) or 16 (its last stage at the previous "
        "stage's resolution, dilated: twice the attention grid on a side, e.g. 7 x 7 instead of 4 x 4 at 112 px) "
        "(default: %(default)s)",
    )
    limit: int | None = option(None, "at most this many images per split (quick runs)", minimum=1)
    epochs: int = option(3, "epochs of stream training", minimum=0)
    recipe: str = option(
        DEFAULT_RECIPE,
        "how the stream starts and learns: gap-start (starts as the GAP prediction, AdamW) or paper "
        "(Xavier or truncated-normal projections, SGD lr 0.1) (default: %(default)s)",
        choices=tuple(RECIPES),
    )
    lr: float | None = option(None, "stream learning rate (default: the recipe's)")
    optimizer: str | None = option(None, "stream optimiser (default: the recipe's)", choices=OPTIMIZERS)
    baseline: str = option(
        "auto",
        "baseline stage before the stream: a linear probe, end-to-end training, or none "
        "(auto: none when the classifier fits the data, a probe for pretrained weights, else full)",
        choices=("auto", "probe", "full", "none"),
    )
    baseline_epochs: int = option(8, "epochs of the baseline stage", minimum=0)
    baseline_small_size: int | None = option(
        None,
        "an end-to-end baseline sees images downscaled to this size in its first epochs, at a fraction of "
        "the cost (default: 4/7 of the crop: 64 px at 112, 128 at 224)",
        minimum=1,
    )
    baseline_small_epochs: int = option(
        5,
        "how many of the baseline's epochs run at the small size, 0 for none; the last always runs at full "
        "size (default: %(default)s)",
        minimum=0,
    )
    baseline_lr: float | None = option(
        None, "baseline learning rate (default 0.002 with adamw; with sgd 0.05 full, 0.5 probe)"
    )
    baseline_optimizer: str = option("adamw", "baseline optimiser", choices=OPTIMIZERS)
    batch_size: int = option(32, "images per step on each process", minimum=1)
    out: str = option("runs/default", "run folder (checkpoint, config.json, metrics.json)")
    resume: bool = option(False, "continue the run in --out after its last finished epoch")
    seed: int = option(0, "seed of the data, the initialisation and the shuffling (default: %(default)s)")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    precision: str = option(
        "auto",
        "autocast: auto is bf16 on CPUs with native bf16 (AMX, AVX512-BF16) and on GPUs (fp16 where bf16 "
        "is missing), float32 on other CPUs (default: %(default)s)",
        choices=POLICIES,
    )
    workers: int = option(2, "data-loading processes for ImageFolder data")
    cache_dir: str | None = option(str(DEFAULT_CACHE), "folder to cache generated synthetic images in ('' for none)")
    progress: bool = option(True, "no progress bars")
    synthetic_train: int = option(4000, "synthetic training images", minimum=1)
    synthetic_val: int = option(1000, "synthetic validation images", minimum=1)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_output_stride(self.output_stride)


def recorded_options(config: dict[str, Any], **changes: Any) -> FitOptions:
    """The options a run recorded in its configuration (``config.json``), with ``changes``."""
    stored = dict(config["options"])
    if "amp" in stored:  # runs started before the precision policy recorded a flag
        stored["precision"] = "auto" if stored.pop("amp") else "fp32"
    return FitOptions(**{**stored, **changes})


def _data_config(options: FitOptions) -> DataConfig:
    if options.data:
        return DataConfig(
            kind="imagefolder",
            root=str(Path(options.data).resolve()),
            image_size=options.image_size or 224,
            train_count=options.limit or 0,
            val_count=options.limit or 0,
            seed=options.seed,
        )
    limit = options.limit or max(options.synthetic_train, options.synthetic_val)
    return DataConfig(
        kind="synthetic",
        image_size=options.image_size or 112,
        train_count=min(options.synthetic_train, limit),
        val_count=min(options.synthetic_val, limit),
        seed=options.seed,
    )


def _initial_model(options: FitOptions, data_classes: int, initial: weights.InitialWeights) -> tuple[CAStreamNet, str]:
    """Builds the model for ``data_classes`` from the initial weights; returns it and the baseline stage."""
    stream = recipes.recipe(options.recipe)
    config = ModelConfig(options.backbone, data_classes, stream.taps, options.output_stride)
    model = CAStreamNet(config, stream_init=stream.init)
    fits = initial.num_classes == data_classes
    classifier = "backbone.net." + model.backbone.classifier_prefix
    if initial.kind == "checkpoint":
        # The backbone and classifier carry over; the stream starts afresh as the recipe says (--resume continues one).
        state = {
            k: v
            for k, v in initial.checkpoint.state_dict.items()
            if k.startswith("backbone.") and (fits or not k.startswith(classifier))
        }
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if k.startswith("backbone.") and (fits or not k.startswith(classifier))]
        if missing or unexpected:
            raise ValueError(f"checkpoint {initial.name!r} does not fit {options.backbone}: missing {missing[:4]}")
    elif initial.state_dict is not None:
        missing, unexpected = model.backbone.net.load_state_dict(
            {k: v for k, v in initial.state_dict.items() if fits or not ("backbone.net." + k).startswith(classifier)},
            strict=False,
        )
        missing = [k for k in missing if fits or not ("backbone.net." + k).startswith(classifier)]
        if missing or unexpected:
            raise ValueError(
                f"weights {initial.name!r} do not fit {options.backbone}: missing {missing[:4]}, "
                f"unexpected {list(unexpected)[:4]}"
            )
    if options.baseline != "auto":
        return model, options.baseline
    if not initial.pretrained:
        return model, "full"
    return model, "none" if fits else "probe"


def _plan(options: FitOptions, baseline: str) -> list[tuple[str, StageSettings]]:
    plan = []
    if baseline != "none" and options.baseline_epochs > 0:
        adamw = options.baseline_optimizer == "adamw"
        lr = options.baseline_lr or (0.002 if adamw else 0.05 if baseline == "full" else 0.5)
        weight_decay = (0.05 if adamw else 5e-4) if baseline == "full" else 0.0
        crop = _data_config(options).image_size
        small = options.baseline_small_size or round(crop * 4 / 7)  # 64 px at 112, 128 at 224
        small = small if baseline == "full" and small < crop else None  # a probe's features are fixed
        settings = StageSettings(
            options.baseline_epochs,
            lr,
            options.baseline_optimizer,
            BASELINE_MOMENTUM,
            weight_decay,
            BASELINE_WARMUP_EPOCHS,
            small_size=small,
            small_epochs=min(options.baseline_small_epochs, options.baseline_epochs - 1) if small else 0,
        )
        plan.append((baseline, settings))
    stream = recipes.recipe(options.recipe)
    optimizer = options.optimizer or stream.optimizer
    lr = options.lr or (stream.lr if optimizer == stream.optimizer else recipes.DEFAULT_LR[optimizer])
    plan.append(("stream", StageSettings(options.epochs, lr, optimizer, stream.momentum, stream.weight_decay, 0.0)))
    return plan


def _describe(
    options: FitOptions, model: CAStreamNet, data: Data, runtime: TrainingContext, plan: list
) -> dict[str, Any]:
    return {
        "options": asdict(options),
        "model": model.config.to_dict(),
        "data": data.config.to_dict(),
        "classes": list(data.classes),
        "preprocessing": data.preprocessing.to_dict(),
        "plan": [[stage, asdict(settings)] for stage, settings in plan],
        "runtime": {
            "device": str(runtime.device),
            "world_size": runtime.world,
            "precision": runtime.precision,
            "autocast": precision.describe(runtime.dtype),
            "native_bf16_cpu": precision.cpu_has_native_bf16(),
            "cpu": precision.cpu_model(),
        },
        "versions": {"castream": VERSION, "torch": str(torch.__version__)},  # plain str: loads with weights_only
        "git_revision": git_revision(),
    }


@dataclass(frozen=True)
class Start:
    """How a run begins: a fresh run from its initial weights, or a resumed one from its last checkpoint.

    ``model`` builds the model for the data's number of classes and names the baseline stage it needs.
    """

    options: FitOptions
    preprocessing: Preprocessing
    model: Callable[[int], tuple[CAStreamNet, str]]
    config: dict[str, Any] | None = None  # the configuration recorded by the run; None: a new run, described here
    completed: dict[str, Any] = field(default_factory=dict)  # finished stages: their history and seconds
    stage: str | None = None  # the stage that was running, continued from ``resume_point``
    resume_point: dict[str, Any] | None = None


def fresh_start(options: FitOptions) -> Start:
    """A new run: the initial weights resolved, and the preprocessing they were trained with."""
    initial = weights.resolve(options.weights, options.backbone)
    size = _data_config(options).image_size
    preprocessing = preprocessing_for(initial.transforms, size, family_of(options.backbone).preprocessing(size))
    if initial.kind == "checkpoint":
        stored = initial.checkpoint.preprocessing
        preprocessing = Preprocessing(
            round(size * stored.resize / stored.crop), size, stored.mean, stored.std, stored.interpolation
        )
    return Start(options, preprocessing, lambda classes: _initial_model(options, classes, initial))


def resumed_start(saved: checkpoint.Checkpoint, out: str) -> Start:
    """The run ``saved`` belongs to, with the options it recorded, after its last finished epoch."""
    options = recorded_options(saved.config, out=out, resume=True)
    plan = saved.config["plan"]
    baseline = plan[0][0] if len(plan) > 1 else "none"
    return Start(
        options,
        saved.preprocessing,
        lambda classes: (saved.build_model(), baseline),
        saved.config,
        dict(saved.completed),
        saved.stage,
        saved.resume_point,
    )


def fit(options: FitOptions) -> dict[str, Any]:
    """Trains (or resumes) the run in ``options.out``; returns the final metrics."""
    runtime = setup_distributed(options.device, options.precision, options.progress)
    chosen = precision.describe(runtime.dtype)
    log.info(
        "precision %s: %s on %s",
        options.precision,
        "float32" if chosen == "fp32" else f"{chosen} autocast",
        runtime.device,
    )
    path = Path(options.out) / CHECKPOINT_NAME
    try:
        if options.resume and path.exists():
            saved = checkpoint.load(path)
            log.info("resuming %s (stage %s, epoch %s)", path, saved.stage, saved.resume_point["epoch"])
            start = resumed_start(saved, options.out)
        else:
            if options.resume:
                log.warning("--resume: no checkpoint at %s, starting a new run", path)
            start = fresh_start(options)
        metrics = run(start, runtime)
    except BaseException:
        # No barrier on the way out: the other ranks may never reach it. torchrun ends them once this one exits.
        abandon_distributed(runtime)
        raise
    teardown_distributed()
    return metrics


def run(start: Start, runtime: TrainingContext) -> dict[str, Any]:
    """Runs the stages ``start`` has not finished, saving after every epoch; returns the final metrics."""
    options = start.options
    out = Path(options.out)
    path = out / CHECKPOINT_NAME
    torch.manual_seed(options.seed)
    cache = Path(options.cache_dir) if options.cache_dir else None
    data_started = time.perf_counter()
    data = load_data(_data_config(options), start.preprocessing, cache, options.workers)
    data_seconds = round(time.perf_counter() - data_started, 1)
    model, baseline = start.model(len(data.classes))
    model.to(runtime.device)
    plan = _plan(options, baseline)
    config = start.config or _describe(options, model, data, runtime, plan)
    train = Batches(data.train, options.batch_size, True, options.seed, runtime.rank, runtime.world)
    val = Batches(data.val, options.batch_size, False, options.seed, runtime.rank, runtime.world)
    if runtime.main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.json", json.dumps(config, indent=2) + "\n")

    completed = dict(start.completed)
    started = time.perf_counter()
    for stage, settings in plan:
        if stage in completed:
            continue

        def save(stage_state: dict[str, Any], stage: str = stage) -> None:
            save_checkpoint(path, runtime, _state(model, data, config, stage, stage_state, completed))

        resume = start.resume_point if stage == start.stage else None
        result = train_stage(model, stage, train, val, settings, runtime, save, resume)
        completed[stage] = {"history": result.history, "seconds": round(result.seconds, 1)}
    metrics = {**top1(model, val, runtime, ("gap", "ca")), "stages": completed}
    metrics["train_seconds"] = round(time.perf_counter() - started, 1)
    metrics["data_seconds"] = data_seconds  # generating or reading the data, before the first stage
    recorded = {k: v for k, v in metrics.items() if k.startswith("val_")}
    save_checkpoint(path, runtime, _state(model, data, config, checkpoint.FINISHED, {"epoch": 0}, completed, recorded))
    if runtime.main:
        write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        log.info("val top-1: GAP %.2f %%, CA %.2f %% -> %s", metrics["val_top1_gap"], metrics["val_top1_ca"], path)
    return metrics


def _state(
    model: CAStreamNet,
    data: Data,
    config: dict[str, Any],
    stage: str,
    stage_state: dict[str, Any],
    completed: dict[str, Any],
    metrics: dict[str, float] | None = None,
) -> checkpoint.Checkpoint:
    return checkpoint.Checkpoint(
        model=model.config,
        state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
        classes=tuple(data.classes),
        preprocessing=data.preprocessing,
        data=data.config,
        stage=stage,
        metrics=metrics or {},
        config=config,
        resume_point=stage_state,
        completed=dict(completed),
    )
