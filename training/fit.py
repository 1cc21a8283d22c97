"""Train a CA stream on a frozen torchvision backbone.

python -m training.fit                          # the embedded synthetic default -> runs/default/
python -m training.fit --backbone resnet50 --weights IMAGENET1K_V2 --data /data/birds --out runs/birds
torchrun --nproc-per-node 2 -m training.fit ... # DDP
"""

from __future__ import annotations

import argparse
import logging
import sys

from training.backbones import BACKBONES
from training.logs import setup_logging
from training.pipeline import FitOptions, fit
from training.precision import PRECISIONS
from training.recipes import RECIPES


def parse_args(argv: list[str] | None = None) -> FitOptions:
    defaults = FitOptions()
    parser = argparse.ArgumentParser(
        prog="python -m training.fit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--backbone", default=defaults.backbone, choices=BACKBONES, help="torchvision backbone")
    add(
        "--weights",
        default=defaults.weights,
        help="torchvision weights name (IMAGENET1K_V2...), a state-dict file or a castream checkpoint; "
        "default: random initialisation",
    )
    add("--data", default=defaults.data, help="ImageFolder root with train/ and val/; default: synthetic data")
    add("--image-size", type=int, default=None, help="crop size (default 224, or 112 for the synthetic data)")
    add("--limit", type=int, default=None, help="at most this many images per split (quick runs)")
    add("--epochs", type=int, default=defaults.epochs, help="epochs of stream training")
    add(
        "--recipe",
        default=defaults.recipe,
        choices=tuple(RECIPES),
        help="how the stream starts and learns: gap-start (starts as the GAP prediction, AdamW) or paper "
        "(Xavier or truncated-normal projections, SGD lr 0.1) (default: %(default)s)",
    )
    add("--lr", type=float, default=None, help="stream learning rate (default: the recipe's)")
    add("--optimizer", default=None, choices=("sgd", "adamw"), help="stream optimiser (default: the recipe's)")
    add(
        "--baseline",
        default=defaults.baseline,
        choices=("auto", "probe", "full", "none"),
        help="baseline stage before the stream: a linear probe, end-to-end training, or none "
        "(auto: none when the classifier fits the data, a probe for pretrained weights, else full)",
    )
    add("--baseline-epochs", type=int, default=defaults.baseline_epochs, help="epochs of the baseline stage")
    add(
        "--baseline-small-size",
        type=int,
        default=defaults.baseline_small_size,
        help="an end-to-end baseline sees images downscaled to this size in its first epochs, at a fraction of "
        "the cost (default: 4/7 of the crop: 64 px at 112, 128 at 224)",
    )
    add(
        "--baseline-small-epochs",
        type=int,
        default=defaults.baseline_small_epochs,
        help="how many of the baseline's epochs run at the small size, 0 for none; the last always runs at full "
        "size (default: %(default)s)",
    )
    add(
        "--baseline-lr",
        type=float,
        default=None,
        help="baseline learning rate (default 0.002 with adamw; with sgd 0.05 full, 0.5 probe)",
    )
    add(
        "--baseline-optimizer", default=defaults.baseline_optimizer, choices=("sgd", "adamw"), help="baseline optimiser"
    )
    add("--batch-size", type=int, default=defaults.batch_size, help="images per step on each process")
    add("--out", default=defaults.out, help="run folder (checkpoint, config.json, metrics.json)")
    add("--resume", action="store_true", help="continue the run in --out after its last finished epoch")
    add("--seed", type=int, default=defaults.seed)
    add("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N")
    add(
        "--precision",
        default=defaults.precision,
        choices=PRECISIONS,
        help="autocast: auto is bf16 on CPUs with native bf16 (AMX, AVX512-BF16) and on GPUs (fp16 where bf16 "
        "is missing), float32 on other CPUs (default: %(default)s)",
    )
    add("--no-amp", dest="precision", action="store_const", const="fp32", help="the same as --precision fp32")
    add("--workers", type=int, default=defaults.workers, help="data-loading processes for ImageFolder data")
    add("--cache-dir", default=defaults.cache_dir, help="folder to cache generated synthetic images in ('' for none)")
    add("--synthetic-train", type=int, default=defaults.synthetic_train, help="synthetic training images")
    add("--synthetic-val", type=int, default=defaults.synthetic_val, help="synthetic validation images")
    add("--no-progress", dest="progress", action="store_false", help="no progress bars")
    args = parser.parse_args(argv)
    for name in (
        "epochs",
        "baseline_epochs",
        "baseline_small_epochs",
        "baseline_small_size",
        "batch_size",
        "limit",
        "image_size",
        "synthetic_train",
        "synthetic_val",
    ):
        value = getattr(args, name)
        if value is not None and value < (0 if name.endswith("epochs") else 1):
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    return FitOptions(**vars(args))


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    options = parse_args(argv)
    try:
        fit(options)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        logging.getLogger("training.fit").error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
