"""The ONNX Runtime session: loading, warm-up, and one batched run."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.contract import ATTENTION, CLASS_MAPS, INPUT, LOGITS, required_outputs
from service.metadata import ModelError, ModelInfo, parse_metadata
from service.providers import CUDA, check_loaded, requested_providers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageOutput:
    """One image's share of a batch: logits [classes], attention [h, w] and class maps [classes, h, w].

    ``attention`` is None for GAP models; ``class_maps`` is None unless the batch fetched them.
    """

    logits: np.ndarray
    attention: np.ndarray | None
    class_maps: np.ndarray | None = None


class OnnxModel:
    """Runs batches through one session; pads each batch up to a bucket size when ``buckets`` is set."""

    def __init__(self, session: ort.InferenceSession, info: ModelInfo, buckets: tuple[int, ...] = ()):
        self.session, self.info, self.buckets = session, info, buckets
        self.outputs = [LOGITS, ATTENTION] if info.has_attention else [LOGITS]
        # Files exported before class maps existed lack the output; they serve everything else.
        self.has_class_maps = info.has_attention and any(o.name == CLASS_MAPS for o in session.get_outputs())
        # Known from the graph when its dimensions are static, otherwise from the warm-up's output.
        dims = next((o.shape[1:] for o in session.get_outputs() if o.name == ATTENTION), None)
        static = dims is not None and len(dims) == 2 and all(isinstance(d, int) for d in dims)
        self.attention_shape: tuple[int, int] | None = (dims[0], dims[1]) if static else None

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def run(self, batch: np.ndarray, class_maps: bool = False) -> list[ImageOutput]:
        """``batch`` is [n, 3, crop, crop] float32; returns n outputs in order, with class maps if asked."""
        if class_maps and not self.has_class_maps:
            raise ModelError(f"{self.info.name} has no {CLASS_MAPS!r} output")
        n = len(batch)
        size = next((b for b in self.buckets if b >= n), n)
        if size > n:
            batch = np.concatenate([batch, np.zeros((size - n, *batch.shape[1:]), batch.dtype)])
        results = self.session.run(self.outputs + [CLASS_MAPS] * class_maps, {INPUT: batch})
        logits = results[0][:n]
        attention = results[1][:n] if self.info.has_attention else [None] * n
        maps = results[-1][:n] if class_maps else [None] * n
        if not len(logits) == len(attention) == len(maps) == n:
            raise RuntimeError(f"the model returned {len(logits)} outputs for a batch of {n} images")
        return [ImageOutput(*parts) for parts in zip(logits, attention, maps, strict=True)]

    def warm_up(self, sizes: list[int]) -> None:
        """Run every batch size that will be used once, and check the outputs against the metadata."""
        crop = self.info.preprocessing.crop
        for size in sizes:
            outputs = self.run(np.zeros((size, 3, crop, crop), np.float32))
            first = outputs[0]
            if first.logits.shape != (len(self.info.classes),):
                raise ModelError(
                    f"the model gives {first.logits.shape[-1]} logits but its metadata names "
                    f"{len(self.info.classes)} classes; re-export it"
                )
            if first.attention is not None:
                self.attention_shape = (int(first.attention.shape[0]), int(first.attention.shape[1]))
        log.info("warmed up batch sizes %s on %s", sizes, self.providers[0])


def load_model(path: Path, providers: list[str], intra_threads: int = 0, inter_threads: int = 0) -> OnnxModel:
    """Open ``path`` with the requested providers; raise :class:`ModelError` with a readable reason."""
    requested, auto = requested_providers(providers)
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_threads
    options.inter_op_num_threads = inter_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle ONNX Runtime threads would otherwise spin and take CPU from decoding and the event loop.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=requested)
    except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable files
        raise ModelError(f"cannot load ONNX model {str(path)!r}: {exc}; re-export it with `make export`") from exc
    in_use = session.get_providers()
    check_loaded(requested, in_use, auto)
    if auto and CUDA in requested and CUDA not in in_use:
        log.warning("CUDA is available but its provider did not load; running on CPU")
    info = parse_metadata(session.get_modelmeta().custom_metadata_map, str(path))
    _check_graph(session, info, str(path))
    log.info("loaded %s (%s, %d classes) with providers %s", info.name, info.pooling, len(info.classes), in_use)
    return OnnxModel(session, info)


def _check_graph(session: ort.InferenceSession, info: ModelInfo, source: str) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    expected = set(required_outputs(info.pooling))
    if INPUT not in inputs or not expected <= outputs:
        raise ModelError(
            f"{source}: graph has inputs {sorted(inputs)} and outputs {sorted(outputs)}; a {info.pooling!r} model "
            f"needs input {INPUT!r} and outputs {sorted(expected)}"
        )
    crop = info.preprocessing.crop
    shape = inputs[INPUT].shape
    fixed = zip(shape[1:], (3, crop, crop), strict=False)
    if len(shape) != 4 or any(isinstance(dim, int) and dim != want for dim, want in fixed):
        raise ModelError(
            f"{source}: input {INPUT!r} has shape {shape}; the metadata's crop needs [N, 3, {crop}, {crop}]"
        )
