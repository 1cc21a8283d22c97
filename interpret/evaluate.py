"""Interpretability evaluation: the GAP baseline against the CA model of a checkpoint, on the paper's protocol.

python -m interpret.evaluate                                  # the default run, runs/default/castream.pt
python -m interpret.evaluate --checkpoint runs/birds/castream.pt --limit 500 --out results/birds
python -m interpret.evaluate --methods gradcam attention --target predicted

Writes interpretability.md / .csv / .json / .png into the checkpoint's folder (or --out).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from interpret import report, run
from interpret.saliency import METHODS
from training.logs import setup_logging

log = logging.getLogger("interpret.evaluate")


def parse_args(argv: list[str] | None = None) -> run.EvalOptions:
    defaults = run.EvalOptions()
    parser = argparse.ArgumentParser(
        prog="python -m interpret.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--checkpoint", default=defaults.checkpoint, help="castream checkpoint (default: %(default)s)")
    add("--out", default=None, help="folder for the table and picture (default: the checkpoint's folder)")
    add("--limit", type=int, default=defaults.limit, help="validation images to explain (default: %(default)s)")
    add("--methods", nargs="+", default=list(defaults.methods), choices=METHODS, help="saliency methods (default: all)")
    add(
        "--target",
        default=defaults.target,
        choices=run.TARGETS,
        help="explained class: the ground truth, or each model's prediction (default: %(default)s)",
    )
    add("--pixels-per-step", type=int, default=None, help="insertion/deletion pace (default: 28 steps, as at 224 px)")
    add(
        "--blur-kernel",
        type=int,
        default=defaults.blur_kernel,
        help="Gaussian kernel of the insertion substrate (default: %(default)s, as RISE; the paper's code: 5)",
    )
    add(
        "--blur-sigma",
        type=float,
        default=defaults.blur_sigma,
        help="Gaussian sigma of the insertion substrate (default: %(default)s)",
    )
    add("--batch-size", type=int, default=defaults.batch_size, help="images per forward pass (default: %(default)s)")
    add("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N")
    add("--cache-dir", default=defaults.cache_dir, help="folder for cached synthetic images (default: %(default)s)")
    add("--grid-images", type=int, default=defaults.grid_images, help="rows of the picture grid (default: %(default)s)")
    add("--seed", type=int, default=defaults.seed, help="seed of the random validation subset (default: %(default)s)")
    add("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = parser.parse_args(argv)
    args.methods = tuple(dict.fromkeys(args.methods))
    try:
        return run.EvalOptions(**vars(args))
    except ValueError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    options = parse_args(argv)
    try:
        results, samples, state = run.run(options)
    except (ValueError, FileNotFoundError) as error:
        log.error("%s", error)
        return 2
    out = Path(options.out) if options.out else Path(options.checkpoint).parent
    paths = report.write(results, samples, out, {"checkpoint_metrics": state.get("metrics", {})})
    print(paths["md"].read_text())
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
