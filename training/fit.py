"""Train a CA stream on a frozen torchvision backbone.

python -m training.fit                          # the embedded synthetic default -> runs/default/
python -m training.fit --backbone resnet50 --weights IMAGENET1K_V2 --data /data/birds --out runs/birds
torchrun --nproc-per-node 2 -m training.fit ... # DDP
"""

from __future__ import annotations

import logging
import sys

from training.logs import setup_logging
from training.options import command_parser, from_args
from training.pipeline import FitOptions, fit


def parse_args(argv: list[str] | None = None) -> FitOptions:
    parser = command_parser("training.fit", __doc__, FitOptions)
    parser.add_argument(
        "--no-amp", dest="precision", action="store_const", const="fp32", help="the same as --precision fp32"
    )
    return from_args(parser, FitOptions, parser.parse_args(argv))


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
