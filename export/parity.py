"""How far ONNX Runtime's float32 outputs fall from PyTorch's on this CPU: the spread the export tolerates.

Both are correct float32 programs; their kernels add in different orders, so their outputs differ by
rounding. This prints the largest differences of every output over many validation images and batch sizes,
each relative to its scale (the contract's table: logits and class maps on the largest absolute logit,
attention on the largest weight of the maps), next to the export's tolerances, so the margin between rounding
and the tolerance can be read off.

python -m export.parity                                  # the default run, 512 validation images
python -m export.parity --checkpoint runs/x/castream.pt --images 1000 --batch-sizes 1 8 32
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from export.graph import export_graph
from export.samples import load_samples
from export.sessions import make_session, run_batches
from export.verify import FP32, reference_outputs, relative_errors, tolerances
from service.contract import OUTPUT_NAMES
from training import checkpoint
from training.checkpoint import DEFAULT as DEFAULT_CHECKPOINT
from training.data import DEFAULT_CACHE
from training.logs import setup_logging

log = logging.getLogger(__name__)


def run(path: str, images: int, batch_sizes: list[int], cache: Path | None = DEFAULT_CACHE) -> dict[str, Any]:
    state = checkpoint.load(path)
    model = state.build_model()
    samples = load_samples(state, "val", images, cache)
    proto = export_graph(model, "ca", samples.images.shape[-1])
    session = make_session(proto.SerializeToString(), threads=0)
    reference = reference_outputs(model, samples.images, "ca", threads=0)
    rows = []
    for batch_size in batch_sizes:
        outputs = run_batches(session, samples.images, batch_size)
        errors = relative_errors(outputs, reference)
        rows.append({"batch_size": batch_size, **{k: float(v) for k, v in errors.items()}})
        log.info("batch %d: %s", batch_size, errors)
    names = [name for name in OUTPUT_NAMES if name in rows[0]]
    tolerance = tolerances(FP32, names)
    worst = {name: max(r[name] for r in rows) for name in names}
    return {
        "checkpoint": path,
        "images": len(samples.images),
        "rows": rows,
        "worst": worst,
        "tolerance": tolerance,
        "margin": {name: tolerance[name] / v for name, v in worst.items() if v},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.parity", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    parser.add_argument("--images", type=int, default=512, help="validation images (default: %(default)s)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args(argv)
    setup_logging()
    report = run(args.checkpoint, args.images, args.batch_sizes)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
