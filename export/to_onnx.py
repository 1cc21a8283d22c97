"""Export a training checkpoint to one verified ONNX model (docs/onnx-model.md).

python -m export.to_onnx                                     # the shipped default -> models/castream.onnx
python -m export.to_onnx --int8 --out models/castream-int8.onnx
python -m export.to_onnx --pooling gap --out models/gap.onnx  # the baseline, for comparison
python -m export.to_onnx --triton-repository models/triton    # and a Triton model repository for the file

The model is written only if it passes every check; otherwise the command exits with status 1 and
says which check failed and by how much. Status 2 means the inputs were wrong (missing checkpoint...).
"""

from __future__ import annotations

import argparse
import logging
import sys

from export.agreement import Thresholds
from export.pipeline import ExportOptions, ExportReport, export_checkpoint
from export.triton import KINDS
from export.verify import VerificationError
from service.contract import POOLINGS
from training.logs import setup_logging

QUIET_LOGGERS = ("onnxscript", "onnx_ir", "onnxruntime", "torch.onnx", "torch.export", "torch._dynamo")


def parse_args(argv: list[str] | None = None) -> tuple[ExportOptions, bool]:
    """The options, and whether to log third-party messages too."""
    defaults = ExportOptions()
    parser = argparse.ArgumentParser(
        prog="python -m export.to_onnx", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--checkpoint", default=defaults.checkpoint, help="castream checkpoint to export")
    add("--out", default=defaults.out, help="ONNX file to write")
    add("--pooling", default=defaults.pooling, choices=POOLINGS, help="ca: logits, attention, class maps; gap: logits")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--int8", dest="precision", action="store_const", const="int8", help="int8 for CPU serving")
    precision.add_argument("--fp16", dest="precision", action="store_const", const="fp16", help="fp16 for GPU serving")
    add("--name", default=None, help="model name reported by the service (default castream-<backbone>-<pooling>)")
    add("--verify-images", type=int, default=defaults.verify_images, help="validation images compared with PyTorch")
    add(
        "--calibration-images",
        type=int,
        default=defaults.calibration_images,
        help="int8: training images to calibrate on",
    )
    add("--agreement-images", type=int, default=defaults.agreement_images, help="int8: validation images to compare on")
    thresholds = Thresholds()
    add("--min-top1", type=float, default=thresholds.top1, help="int8: minimum top-1 agreement with fp32 (fraction)")
    add("--min-peak", type=float, default=thresholds.peak, help="int8: minimum attention-peak agreement (fraction)")
    add(
        "--min-correlation", type=float, default=thresholds.correlation, help="int8: minimum mean attention correlation"
    )
    add("--min-speedup", type=float, default=thresholds.speedup, help="int8: minimum speed-up over fp32 (0: no check)")
    add("--threads", type=int, default=defaults.threads, help="CPU threads for the checks and timings (0: all cores)")
    add("--cache-dir", default=defaults.cache_dir, help="synthetic-image cache shared with training ('' for none)")
    add("--triton-repository", default=None, help="also write a Triton model repository for the file (export.triton)")
    add("--triton-kind", default=defaults.triton_kind, choices=KINDS, help="Triton instances: KIND_CPU or KIND_GPU")
    add(
        "--samples",
        type=int,
        default=None,
        help="labelled validation images embedded for the service's page, one per class (default: up to 12 for "
        "the synthetic data, 0 for your own data, whose images would travel inside the model file)",
    )
    add("--allow-unfinished", action="store_true", help="export a checkpoint whose training has not finished")
    add("-v", "--verbose", action="store_true", help="log the exporter's and quantiser's own messages too")
    args = parser.parse_args(argv)
    try:
        limits = Thresholds(args.min_top1, args.min_peak, args.min_correlation, args.min_speedup)
        options = {k: v for k, v in vars(args).items() if not k.startswith("min_") and k != "verbose"}
        return ExportOptions(**{**options, "precision": args.precision or "fp32", "thresholds": limits}), args.verbose
    except ValueError as error:
        parser.error(str(error))


def summary(report: ExportReport) -> str:
    props = report.properties
    lines = [f"wrote {report.path} ({props['model_name']}, {props['precision']}) in {report.seconds:.0f} s"]
    checks = [("fp32", p) for p in report.parity] + [("fp16", p) for p in report.fp16_parity]
    for precision, parity in checks:
        attention = "" if parity.attention_error is None else f", attention within {parity.attention_error:.2g}"
        if parity.class_maps_error is not None:
            attention += f", class maps within {parity.class_maps_error:.2g}"
        lines.append(
            f"  {precision} vs PyTorch at batch {parity.batch_size} ({parity.images} images): "
            f"logits within {parity.logits_error:.2g} (scale {parity.logits_scale:.3g}){attention}"
        )
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
    for name in QUIET_LOGGERS if not verbose else ():
        logging.getLogger(name).setLevel(logging.WARNING)
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
