"""Interpretability evaluation: the GAP baseline against the CA model of a checkpoint, on the paper's protocol.

python -m interpret.evaluate                                  # the shipped default model -> runs/default/
python -m interpret.evaluate --checkpoint runs/birds/castream.pt --limit 500 --out results/birds
python -m interpret.evaluate --methods gradcam attention --target predicted
python -m interpret.evaluate --protocol rise                  # RISE's blur and pace instead of the authors'

Protocols (insertion/deletion; see interpret/protocol.py):
  ca-stream  the CA-Stream authors' evaluation: blur gkern(5, 5), 8 rows of pixels per step (imsize * 8:
             1792 pixels, 28 steps at 224 px; 896 pixels, 14 steps at 112 px)
  rise       RISE's evaluation notebook: blur gkern(11, 5), 1792 (224 * 8) pixels per step at every size
             (28 steps at 224 px, 7 at 112 px)
Both rank pixels as numpy's argsort leaves them, reversed, and upsample Score-CAM masks with
align_corners=True.

Writes interpretability.md / .csv / .json / .png into the checkpoint's folder (or --out; runs/default/ for the
shipped model).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from interpret import report, run
from training.checkpoint import DEFAULT as DEFAULT_CHECKPOINT
from training.logs import setup_logging
from training.options import command_parser, from_args

log = logging.getLogger("interpret.evaluate")


def parse_args(argv: list[str] | None = None) -> run.EvalOptions:
    parser = command_parser("interpret.evaluate", __doc__, run.EvalOptions)
    return from_args(parser, run.EvalOptions, parser.parse_args(argv))


def default_out(checkpoint_path: Path) -> Path:
    """The checkpoint's folder, but never the shipped model's (its folder is part of the project): runs/default."""
    shipped = Path(DEFAULT_CHECKPOINT)
    if shipped.exists() and checkpoint_path.exists() and checkpoint_path.samefile(shipped):
        return Path("runs/default")
    return checkpoint_path.parent


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    options = parse_args(argv)
    try:
        results, samples, state = run.run(options)
    except (ValueError, FileNotFoundError) as error:
        log.error("%s", error)
        return 2
    out = Path(options.out) if options.out else default_out(Path(options.checkpoint))
    paths = report.write(results, samples, out, {"checkpoint_metrics": state.metrics})
    print(paths["md"].read_text())
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
