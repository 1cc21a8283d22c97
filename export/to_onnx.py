"""Export a training checkpoint, or a torchvision classifier as it is, to one verified ONNX model (docs/onnx-model.md).

python -m export.to_onnx                                     # the shipped default -> models/castream.onnx
python -m export.to_onnx --int8 --out models/castream-int8.onnx
python -m export.to_onnx --pooling gap --out models/gap.onnx  # the baseline, for comparison
python -m export.to_onnx --triton-repository models/triton    # and a Triton model repository for the file
python -m export.to_onnx --backbone resnet50 --weights IMAGENET1K_V2 --out models/resnet50.onnx

With --weights (a torchvision weights name or a state-dict file of the --backbone network) the classifier is exported
untrained by castream, with GAP: its class maps are its exact class activation maps (CAM), and it has no attention.
The model is written only if it passes every check; otherwise the command exits with status 1 and
says which check failed and by how much. Status 2 means the inputs were wrong (missing checkpoint...).
"""

from __future__ import annotations

import logging
import sys

from export.agreement import Thresholds
from export.pipeline import ExportOptions, ExportReport, export_checkpoint
from export.pretrained import ClassifierOptions
from export.verify import VerificationError
from training.logs import quiet_third_party, setup_logging
from training.options import add_options, command_parser, from_args


def parse_args(argv: list[str] | None = None) -> tuple[ExportOptions, bool]:
    """The options, and whether to log third-party messages too."""
    parser = command_parser("export.to_onnx", __doc__, ExportOptions)
    numeric = parser.add_mutually_exclusive_group()
    numeric.add_argument("--int8", dest="numerics", action="store_const", const="int8", help="int8 for CPU serving")
    numeric.add_argument("--fp16", dest="numerics", action="store_const", const="fp16", help="fp16 for GPU serving")
    add_options(parser, Thresholds)
    add_options(parser.add_argument_group("a classifier castream did not train (--weights)"), ClassifierOptions)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log the exporter's and quantiser's own messages too"
    )
    args = parser.parse_args(argv)
    limits, classifier = from_args(parser, Thresholds, args), from_args(parser, ClassifierOptions, args)
    numerics = args.numerics or "fp32"
    options = from_args(parser, ExportOptions, args, numerics=numerics, thresholds=limits, classifier=classifier)
    return options, args.verbose


def summary(report: ExportReport) -> str:
    props = report.properties
    lines = [f"wrote {report.path} ({props['model_name']}, {props['precision']}) in {report.seconds:.0f} s"]
    checks = [("fp32", p) for p in report.parity] + [("fp16", p) for p in report.fp16_parity]
    for numerics, parity in checks:
        within = ", ".join(
            f"{name.replace('_', ' ')} within {error:.2g} (scale {parity.scales[name]:.3g})"
            for name, error in parity.errors.items()
        )
        lines.append(f"  {numerics} vs PyTorch at batch {parity.batch_size} ({parity.images} images): {within}")
    if report.agreement is not None:
        agreed = report.agreement
        lines.append(f"  int8 vs fp32 on {agreed.images} validation images: top-1 agreement {agreed.top1:.2%}")
        if agreed.peak is not None:
            lines.append(f"  attention peak agreement {agreed.peak:.2%}, mean correlation {agreed.correlation:.4f}")
    if report.speedup is not None:
        lines.append(f"  int8 speed-up over fp32: {report.speedup:.2f}x")
    if report.fp16_checked_on is not None:
        lines.append(f"  fp16 checked on: {report.fp16_checked_on}")
    if report.triton is not None:
        lines.append(f"  Triton model repository: {report.triton.parent} (model {report.triton.name})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    options, verbose = parse_args(argv)
    setup_logging()
    if not verbose:
        quiet_third_party()
    log = logging.getLogger("export.to_onnx")
    try:
        report = export_checkpoint(options)
    except VerificationError as error:
        log.error("export refused, nothing written to %s: %s", options.out, error)
        return 1
    except (ValueError, FileNotFoundError) as error:
        log.error("%s", error)
        return 2
    print(summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
