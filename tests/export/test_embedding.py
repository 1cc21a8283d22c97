"""The exported ``embedding``: the pooled vector the classifier reads, the CA stream's final token or GAP's mean of
the last feature map, within the export's tolerance of PyTorch's, and the vector the graph's logits come from."""

from __future__ import annotations

import numpy as np
import onnx
import torch

from export.pipeline import ExportReport
from export.samples import load_samples
from export.sessions import make_session, run_batches
from export.verify import FP32, allowed_error
from service.contract import EMBEDDING, LOGITS
from training.checkpoint import Checkpoint


def _pytorch(state: Checkpoint, images: np.ndarray, pooling: str) -> dict[str, np.ndarray]:
    """The pooled vector as training computes it: the stream's final token (CA) or the last map's mean (GAP)."""
    model = state.build_model().float().eval()
    with torch.no_grad():
        taps = model.forward_features(torch.from_numpy(images))
        pooled = model.stream(taps)[0] if pooling == "ca" else taps[-1].float().mean(dim=(2, 3))
        logits = model.backbone.classify(pooled)
    return {EMBEDDING: pooled.numpy(), LOGITS: logits.numpy()}


def _check(report: ExportReport, state: Checkpoint, pooling: str) -> None:
    images = load_samples(state, "val", 16).images
    session = make_session(onnx.load(str(report.path)))
    expected = _pytorch(state, images, pooling)
    width = state.build_model().backbone.head_width
    for batch_size in (1, 8):  # each image's own vector, in order, whatever the batch
        outputs = run_batches(session, images, batch_size)
        assert outputs[EMBEDDING].shape == (len(images), width)
        allowed, scale = allowed_error(EMBEDDING, FP32, expected)
        assert np.abs(outputs[EMBEDDING] - expected[EMBEDDING]).max() <= allowed, (batch_size, scale)
        allowed, _ = allowed_error(LOGITS, FP32, expected)
        assert np.abs(outputs[LOGITS] - expected[LOGITS]).max() <= allowed
    assert np.abs(expected[EMBEDDING] - expected[EMBEDDING].mean(axis=0)).max() > 1e-3  # images really differ


def test_the_ca_embedding_is_the_streams_final_token(ca_export: ExportReport, tiny_state: Checkpoint) -> None:
    _check(ca_export, tiny_state, "ca")
    assert all(EMBEDDING in parity.errors for parity in ca_export.parity)  # export checked it too


def test_the_gap_embedding_is_the_last_feature_maps_mean(gap_export: ExportReport, tiny_state: Checkpoint) -> None:
    _check(gap_export, tiny_state, "gap")
    assert all(EMBEDDING in parity.errors for parity in gap_export.parity)
