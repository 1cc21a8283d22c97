"""Interpretability evaluation: the GAP baseline against the CA model of a checkpoint, on the paper's protocol.

python -m training.evaluate                                   # the default run, runs/default/castream.pt
python -m training.evaluate --checkpoint runs/birds/castream.pt --limit 500 --out results/birds
python -m training.evaluate --methods gradcam attention --target predicted

Writes interpretability.md / .csv / .json / .png into the checkpoint's folder (or --out).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from training import xai_eval, xai_report
from training.saliency import METHODS


def parse_args(argv: list[str] | None = None) -> xai_eval.EvalOptions:
    defaults = xai_eval.EvalOptions()
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--checkpoint", default=defaults.checkpoint, help="castream checkpoint (default: %(default)s)")
    add("--out", default=None, help="folder for the table and picture (default: the checkpoint's folder)")
    add("--limit", type=int, default=defaults.limit, help="validation images to explain (default: %(default)s)")
    add("--methods", nargs="+", default=list(defaults.methods), choices=METHODS, help="saliency methods (default: all)")
    add(
        "--target",
        default=defaults.target,
        choices=xai_eval.TARGETS,
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
        return xai_eval.EvalOptions(**vars(args))
    except ValueError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = parse_args(argv)
    try:
        results, samples, state = xai_eval.run(options)
    except (ValueError, FileNotFoundError) as error:
        logging.getLogger("training.evaluate").error("%s", error)
        return 2
    out = Path(options.out) if options.out else Path(options.checkpoint).parent
    paths = xai_report.write(results, samples, out, {"checkpoint_metrics": state.get("metrics", {})})
    print(paths["md"].read_text())
    logging.getLogger("training.evaluate").info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
