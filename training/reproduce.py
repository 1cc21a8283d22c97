"""Retrain the shipped default model from scratch and compare the result with the shipped one.

python -m training.reproduce                    # checkpoints/default -> runs/default, then the comparison
python -m training.reproduce --out runs/check   # elsewhere

The run takes the options the shipped model recorded in its ``config.json``, so it is the same run: it
matches the shipped metrics to the printed digit on a CPU of the kind that trained it (``config.json``
names it). Float rounding differs between instruction sets (AVX2 and AVX-512 kernels sum in different
orders), so elsewhere the figures may move by a few tenths of a point; the comparison says which CPU
trained each.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from training.checkpoint import DEFAULT
from training.logs import setup_logging
from training.pipeline import fit, recorded_options
from training.precision import cpu_model

log = logging.getLogger("training.reproduce")

COMPARED = ("val_top1_gap", "val_top1_ca")


def compare(shipped: dict[str, Any], retrained: dict[str, Any]) -> tuple[str, bool]:
    """A table of the shipped and retrained metrics, and whether they agree to the printed digit."""
    rows = [f"{'':14} {'shipped':>8} {'retrained':>10}"]
    same = True
    for key in COMPARED:
        before, after = float(shipped[key]), float(retrained[key])
        agree = f"{before:.1f}" == f"{after:.1f}"
        same &= agree
        rows.append(f"{key:14} {before:8.1f} {after:10.1f}  {'same' if agree else f'differs by {after - before:+.1f}'}")
    return "\n".join(rows), same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shipped", default=str(Path(DEFAULT).parent), help="the shipped run (default: %(default)s)")
    parser.add_argument("--out", default="runs/default", help="where to retrain (default: %(default)s)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    args = parser.parse_args(argv)
    setup_logging()
    shipped = Path(args.shipped)
    try:
        config = json.loads((shipped / "config.json").read_text())
        recorded = json.loads((shipped / "metrics.json").read_text())
    except (OSError, ValueError) as error:
        log.error("cannot read the shipped run in %s: %s", shipped, error)
        return 2
    if Path(args.out).resolve() == shipped.resolve():
        log.error("--out must differ from the shipped run's folder %s", shipped)
        return 2
    options = recorded_options(config, out=args.out, resume=False, progress=args.progress)
    started = time.perf_counter()
    metrics = fit(options)
    minutes, seconds = divmod(round(time.perf_counter() - started), 60)
    table, same = compare(recorded, metrics)
    trained_on = config.get("runtime", {}).get("cpu", "a CPU it did not record")
    print(f"retrained {shipped} into {args.out} in {minutes} min {seconds:02d} s on {cpu_model()}")
    print(f"(the shipped model was trained on {trained_on})")
    print(table)
    if not same:
        log.warning("the retrained model differs from the shipped one; on another CPU kind this is float rounding")
    return 0


if __name__ == "__main__":
    sys.exit(main())
