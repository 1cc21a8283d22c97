"""One export, start to finish: checkpoint -> graph -> checks -> (int8 | fp16) -> metadata -> file.

A classifier castream did not train (``--weights``) enters as a checkpoint record too (``export.pretrained``).

Nothing is written until every check has passed; the file then appears atomically (temporary file in
the same folder, renamed), so a failed or interrupted export never leaves a model behind.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented

from export import agreement, metadata, monitoring, pretrained, triton
from export.fp16 import check_fp16_structure, convert_fp16, numeric_providers
from export.graph import export_graph
from export.quantize import is_quantized, quantize_int8
from export.samples import Samples, gallery, load_samples
from export.sessions import make_session, run_batches
from export.timing import time_sessions
from export.verify import (
    FP16,
    FP32,
    Parity,
    VerificationError,
    allowed_error,
    check_attention_maps,
    check_parity,
    check_structure,
    tolerances,
)
from export.verify import reference_outputs as torch_outputs
from service.contract import ATTENTION, LOGITS, NUMERICS, POOLINGS
from training import checkpoint
from training.checkpoint import DEFAULT as DEFAULT_CHECKPOINT
from training.checkpoint import Checkpoint
from training.data import DEFAULT_CACHE, DataConfig
from training.files import atomic_write
from training.options import option

log = logging.getLogger(__name__)

DEFAULT_SAMPLES = 12
CHECK_BATCH = 8  # int8's checks and its speed run batches of this many images, as the service's default batch


@dataclass
class ExportOptions:
    """The export command's options (``python -m export.to_onnx --help`` lists them from these fields)."""

    checkpoint: str | None = option(None, f"castream checkpoint to export (default: {DEFAULT_CHECKPOINT})")
    out: str = option("models/castream.onnx", "ONNX file to write")
    pooling: str | None = option(
        None,
        "ca: logits, attention, class maps over it; gap: logits, class activation maps (default ca; --weights: gap)",
        choices=POOLINGS,
    )
    numerics: str = "fp32"  # one of NUMERICS: the command's --int8 / --fp16
    name: str | None = option(None, "model name reported by the service (default castream-<backbone>-<pooling>)")
    verify_images: int = option(64, "validation images compared with PyTorch")
    monitoring_images: int = option(monitoring.IMAGES, "validation images whose monitored figures the file records")
    calibration_images: int = option(256, "int8: training images to calibrate on")
    agreement_images: int = option(1000, "int8: validation images to compare on")
    thresholds: agreement.Thresholds = field(default_factory=agreement.Thresholds)
    threads: int = option(1, "CPU threads for the checks and timings (0: all cores)")
    speed_budget_s: float = 10.0
    cache_dir: str | None = option(str(DEFAULT_CACHE), "synthetic-image cache shared with training ('' for none)")
    allow_unfinished: bool = option(False, "export a checkpoint whose training has not finished")
    samples: int | None = option(
        None,
        "labelled validation images embedded for the service's page, one per class (default: up to 12 for "
        "the synthetic data, 0 for your own data, whose images would travel inside the model file)",
    )
    triton_repository: str | None = option(None, "also write a Triton model repository for the file (export.triton)")
    triton_kind: str = option("cpu", "Triton instances: KIND_CPU or KIND_GPU", choices=triton.KINDS)
    classifier: pretrained.ClassifierOptions = field(default_factory=pretrained.ClassifierOptions)

    def __post_init__(self) -> None:
        if self.classifier.given:
            self._check_classifier()
        elif self.checkpoint is None:
            self.checkpoint = DEFAULT_CHECKPOINT
        if self.pooling is None:
            self.pooling = "gap" if self.classifier.given else "ca"
        if self.triton_kind not in triton.KINDS:
            raise ValueError(f"unknown Triton instance kind {self.triton_kind!r}; expected one of {triton.KINDS}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; expected one of {POOLINGS}")
        if self.numerics not in NUMERICS:
            raise ValueError(f"unknown numeric format {self.numerics!r}; expected one of {NUMERICS}")
        if self.samples is not None and self.samples < 0:
            raise ValueError(f"samples must be 0 or more, got {self.samples!r}")
        for name in ("verify_images", "monitoring_images", "calibration_images", "agreement_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")

    def _check_classifier(self) -> None:
        """What a classifier castream did not train cannot be exported with: it has no stream and no data set."""
        weights = self.classifier.weights
        if self.checkpoint is not None:
            raise ValueError(f"--checkpoint and --weights both name a model; export {self.checkpoint} or {weights}")
        if self.pooling == "ca":
            raise ValueError(
                f"--weights {weights} has no trained CA stream; export it with --pooling gap (its class activation "
                f"maps), or train a stream on it first (python -m training.fit --weights {weights} ...)"
            )
        if self.numerics == "int8":
            raise ValueError("--int8 calibrates on the model's own training images, which --weights does not bring")
        if self.samples:
            raise ValueError("--samples embeds images of the model's own data, which --weights does not bring")


@dataclass
class ExportReport:
    """What was written and what was measured on the way."""

    path: Path
    properties: dict[str, str]
    parity: list[Parity]
    agreement: agreement.Agreement | None = None
    speedup: float | None = None
    fp16_checked_on: str | None = None
    fp16_parity: list[Parity] = field(default_factory=list)
    seconds: float = 0.0
    triton: Path | None = None  # the Triton model folder, when one was asked for


def export_checkpoint(options: ExportOptions) -> ExportReport:
    """Exports, checks and writes the model of ``options.checkpoint``; raises :class:`VerificationError`."""
    started = time.perf_counter()
    state, trained_on = load_subject(options)
    model = state.build_model()
    size, classes = state.preprocessing.crop, len(state.classes)
    cache = Path(options.cache_dir) if options.cache_dir else None
    wanted = max(options.verify_images, options.agreement_images if options.numerics == "int8" else 0)
    val = load_samples(state, "val", max(wanted, options.monitoring_images), cache)
    images = val.images[: options.verify_images]

    log.info("exporting %s with %s pooling at %d px", state.model.backbone, options.pooling, size)
    proto = export_graph(model, options.pooling, size)
    check_structure(proto, options.pooling, classes, size)
    reference = torch_outputs(model, images, options.pooling, threads=options.threads)
    parity = check_parity(make_session(proto, options.threads), reference, images, FP32)
    report = ExportReport(Path(options.out), {}, parity)
    verification: dict[str, Any] = {
        "reference": "pytorch float32",
        "tolerance": tolerances(FP32, reference),
        "parity": [p.to_dict() for p in parity],
    }

    if options.numerics == "int8":
        calibration = load_samples(state, "train", options.calibration_images, cache)
        proto, verification["int8"] = _int8(proto, calibration, val, options, report)
        check_structure(proto, options.pooling, classes, size)
    elif options.numerics == "fp16":
        proto, verification["fp16"] = _fp16(proto, reference, images, options.threads, report)
        check_structure(proto, options.pooling, classes, size)

    # A classifier castream did not train brings no images of its own: its record's data is only what it was checked on.
    samples = gallery(state, 0 if trained_on else sample_count(options.samples, state.data), cache)
    report.properties = metadata.describe(
        state, options.pooling, options.numerics, options.name, verification, samples, trained_on
    )
    if not trained_on:  # the model's own validation images (a classifier castream did not train brings none)
        report.properties |= monitoring.describe(proto, val.images[: options.monitoring_images], options.threads)
    metadata.attach(proto, report.properties)
    write_model(proto, report.path)
    if options.triton_repository:
        kind = triton.TritonOptions(kind=options.triton_kind)
        report.triton = triton.write_repository(report.path, options.triton_repository, kind)
    report.seconds = time.perf_counter() - started
    return report


def load_subject(options: ExportOptions) -> tuple[Checkpoint, str | None]:
    """The record to export, and what it was trained on where castream did not train it (None: the record's data)."""
    if options.classifier.given:
        classifier = pretrained.load(options.classifier, options.verify_images)
        return classifier.record, classifier.trained_on
    state = checkpoint.load(options.checkpoint)
    if not state.finished and not options.allow_unfinished:
        raise ValueError(
            f"checkpoint {options.checkpoint!r} is from an unfinished run (stage {state.stage!r}); finish "
            f"it with `python -m training.fit --resume --out {Path(options.checkpoint).parent}`, "
            "or pass --allow-unfinished"
        )
    return state, None


def sample_count(requested: int | None, data: DataConfig) -> int:
    """How many sample images go into the file: as asked, else 12 for the synthetic data and none for a user's own
    (their images would travel inside every copy of the model file)."""
    if requested is not None:
        return requested
    return DEFAULT_SAMPLES if data.kind == "synthetic" else 0


def _int8(
    fp32: onnx.ModelProto, calibration: Samples, val: Samples, options: ExportOptions, report: ExportReport
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    int8 = quantize_int8(fp32, calibration.images)
    if not is_quantized(int8):
        raise VerificationError("quantisation left no int8 operator in the graph; the int8 model would be float32")
    fp32_session, int8_session = make_session(fp32, options.threads), make_session(int8, options.threads)
    images = val.images[: options.agreement_images]
    reference, candidate = (
        run_batches(fp32_session, images, CHECK_BATCH),
        run_batches(int8_session, images, CHECK_BATCH),
    )
    if ATTENTION in candidate:
        check_attention_maps(candidate[ATTENTION])
    _check_batch_invariance(int8_session, images, candidate)
    report.agreement = agreement.measure(reference, candidate, val.labels[: len(images)])
    log.info("int8 agreement with fp32: %s", report.agreement)
    agreement.check(report.agreement, options.thresholds)

    batch = images[:CHECK_BATCH]
    timings = time_sessions({"fp32": fp32_session, "int8": int8_session}, batch, budget_s=options.speed_budget_s)
    report.speedup = timings.ratio("fp32", "int8")
    log.info("int8 is %.2fx as fast as fp32 (batch %d, %d rounds)", report.speedup, len(batch), timings.rounds)
    if report.speedup < options.thresholds.speedup:
        raise VerificationError(
            f"int8 runs only {report.speedup:.2f}x as fast as fp32 on this CPU, below the "
            f"{options.thresholds.speedup:g}x required; not worth its accuracy cost "
            "(pass --min-speedup 0 to write it anyway)"
        )
    summary = {
        **report.agreement.to_dict(),
        "speedup": round(report.speedup, 3),
        "speed_batch": len(batch),
        "thresholds": asdict(options.thresholds),
        "calibration_images": len(calibration),
    }
    return int8, summary


def _check_batch_invariance(session: Any, images: np.ndarray, batched: dict[str, np.ndarray]) -> None:
    """An image's int8 outputs do not depend on the other images in its batch (static quantisation)."""
    single = run_batches(session, images[:CHECK_BATCH], 1)
    allowed, scale = allowed_error(LOGITS, FP32, {LOGITS: batched[LOGITS][:CHECK_BATCH]})
    error = float(np.abs(single[LOGITS] - batched[LOGITS][:CHECK_BATCH]).max())
    if not error <= allowed:
        raise VerificationError(
            f"int8 logits at batch 1 differ from batch {CHECK_BATCH} by {error:.3g} (scale {scale:.3g})"
        )


def _fp16(
    fp32: onnx.ModelProto, reference: dict[str, np.ndarray], images: np.ndarray, threads: int, report: ExportReport
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    half = convert_fp16(fp32)
    check_fp16_structure(half)
    for providers in numeric_providers():
        try:
            session = make_session(half, threads, providers=providers)
            parity = check_parity(session, reference, images, FP16)
        except OrtNotImplemented as error:  # a provider without float16 kernels for some operator
            log.warning("%s cannot run the fp16 graph (%s); trying the next provider", providers[0], error)
            continue
        report.fp16_checked_on, report.fp16_parity = session.get_providers()[0], parity
        return half, {
            "checked_on": report.fp16_checked_on,
            "tolerance": tolerances(FP16, reference),
            "parity": [p.to_dict() for p in parity],
        }
    log.warning("no execution provider here runs the fp16 graph; only its structure was checked")
    report.fp16_checked_on = "structure only"
    return half, {"checked_on": report.fp16_checked_on}


def write_model(proto: onnx.ModelProto, path: Path) -> Path:
    """Writes ``proto`` to ``path`` atomically."""
    with atomic_write(path) as file:
        file.write(proto.SerializeToString())
    return path
