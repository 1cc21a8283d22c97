"""Test helpers: tiny ONNX models that honour docs/onnx-model.md (no torch), images, clients, live servers."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from service.metadata import Preprocessing
from service.preprocess import Preprocessor
from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["red", "green", "blue", "dark"]
SAMPLES = ("green", "blue")  # the labelled images the tiny model carries for the page
PREPROCESSING = {
    "resize": 36,
    "crop": 32,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "interpolation": "bilinear",
    "layout": "NCHW",
    "dtype": "float32",
    "scale": 1 / 255,
}
# The tiny models' recorded quantiles of the monitored figures (metadata ``monitoring``; a GAP model's: the last only).
MONITORING = {
    "images": 64,
    "quantiles": [0.05, 0.25, 0.5, 0.75, 0.95],
    "figures": {
        "attention_entropy": [0.5, 0.7, 0.9, 0.95, 1.0],
        "attention_peak": [0.0625, 0.07, 0.1, 0.2, 0.4],
        "top1_probability": [0.3, 0.5, 0.7, 0.9, 0.99],
    },
}


def build_model(
    kind: str = "ca", class_maps: bool | None = None, embedding: bool = False, **metadata: str | None
) -> onnx.ModelProto:
    """image [N,3,32,32] -> 8x8 average pool -> 4x4 positions of 3 channels.

    CA: attention = softmax over the 16 positions of (2 * channel sum), so bright regions draw it; the
    attended features feed ``logits = features @ W`` with W picking red, green, blue, and "dark" (minus
    their mean). With ``class_maps`` (by default for CA), the next output splits each logit over the positions:
    ``weight_p * (features_p @ W)`` (the head has no constant). GAP: the same head on the mean over
    positions, and no attention output; with ``class_maps``, its class activation maps (every ``weight_p`` 1/16, and
    metadata ``explanation`` "cam"), without, a file exported before GAP models had them. With ``embedding``, the last
    output is the pooled vector the head
    reads [N, 3] (a file exported since it existed); without, the file is one written before it.
    ``metadata`` overrides properties; None removes one.
    """
    weight = np.array([[1, 0, 0, -1 / 3], [0, 1, 0, -1 / 3], [0, 0, 1, -1 / 3]], np.float32)
    inits = [numpy_helper.from_array(weight, "W")]
    nodes = [helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])]
    if kind == "ca":
        constants = {"shape_f": [0, 3, 16], "shape_s": [0, 16], "shape_a": [0, 4, 4], "shape_p": [0, 3], "axis2": [2]}
        inits += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in constants.items()]
        inits.append(numpy_helper.from_array(np.full((3, 1), 2.0, np.float32), "q"))
        nodes += [
            helper.make_node("Reshape", ["pooled", "shape_f"], ["feats"]),  # [N, 3, 16]
            helper.make_node("Transpose", ["feats"], ["feats_t"], perm=[0, 2, 1]),  # [N, 16, 3]
            helper.make_node("MatMul", ["feats_t", "q"], ["scores3"]),  # [N, 16, 1]
            helper.make_node("Reshape", ["scores3", "shape_s"], ["scores"]),  # [N, 16]
            helper.make_node("Softmax", ["scores"], ["weights"], axis=1),
            helper.make_node("Reshape", ["weights", "shape_a"], ["attention"]),  # [N, 4, 4]
            helper.make_node("Unsqueeze", ["weights", "axis2"], ["weights3"]),  # [N, 16, 1]
            helper.make_node("MatMul", ["feats", "weights3"], ["mixed"]),  # [N, 3, 1]
            helper.make_node("Reshape", ["mixed", "shape_p"], ["vector"]),  # [N, 3]
        ]
        outputs.append(helper.make_tensor_value_info("attention", TensorProto.FLOAT, ["N", 4, 4]))
    else:
        nodes.append(helper.make_node("ReduceMean", ["pooled"], ["vector"], axes=[2, 3], keepdims=0))
    class_maps = kind == "ca" if class_maps is None else class_maps
    if class_maps:
        if kind != "ca":  # CAM: each position weighs 1/16
            inits.append(numpy_helper.from_array(np.array([0, 3, 16], np.int64), "shape_f"))
            inits.append(numpy_helper.from_array(np.full((1, 1, 1), 1 / 16, np.float32), "weights3"))
            nodes += [
                helper.make_node("Reshape", ["pooled", "shape_f"], ["feats"]),  # [N, 3, 16]
                helper.make_node("Transpose", ["feats"], ["feats_t"], perm=[0, 2, 1]),  # [N, 16, 3]
            ]
        inits.append(numpy_helper.from_array(np.array([0, 4, 4, 4], np.int64), "shape_m"))
        nodes += [
            helper.make_node("MatMul", ["feats_t", "W"], ["evidence"]),  # [N, 16, 4]
            helper.make_node("Mul", ["evidence", "weights3"], ["weighted"]),  # [N, 16, 4]
            helper.make_node("Transpose", ["weighted"], ["per_class"], perm=[0, 2, 1]),  # [N, 4, 16]
            helper.make_node("Reshape", ["per_class", "shape_m"], ["class_maps"]),  # [N, 4, 4, 4]
        ]
        outputs.append(helper.make_tensor_value_info("class_maps", TensorProto.FLOAT, ["N", 4, 4, 4]))
    nodes.append(helper.make_node("MatMul", ["vector", "W"], ["logits"]))
    if embedding:
        nodes.append(helper.make_node("Identity", ["vector"], ["embedding"]))
        outputs.append(helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 3]))
    graph = helper.make_graph(
        nodes,
        f"tiny-{kind}",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    props = {
        "castream_format": "1",
        "castream_version": "0.1.0",
        "model_name": f"tiny-{kind}",
        "backbone": "tiny",
        "pooling": kind,
        "precision": "fp32",
        "classes": json.dumps(CLASSES),
        "preprocessing": json.dumps(PREPROCESSING),
        "val_top1": "100.0",
        "dataset": json.dumps({"kind": "synthetic", "seed": 0}),
        "trained_on": "solid colours: 4 classes (red, green, blue, dark)",
        "samples": json.dumps(
            [{"label": label, "png": base64.b64encode(solid_png(COLOURS[label])).decode()} for label in SAMPLES]
        ),
        "monitoring": json.dumps(
            {**MONITORING, "figures": {k: v for k, v in MONITORING["figures"].items() if kind == "ca" or "top1" in k}}
        ),
    }
    if class_maps and kind != "ca":  # a CA file's are its stream's, as for files written before the property
        props["explanation"] = "cam"
    for key, value in metadata.items():
        if value is None:
            del props[key]
        else:
            props[key] = value
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    return model


def save_model(
    path: Path, kind: str = "ca", class_maps: bool | None = None, embedding: bool = False, **metadata: str | None
) -> Path:
    onnx.save(build_model(kind, class_maps, embedding, **metadata), str(path))
    return path


def solid_png(colour: tuple[int, int, int], size: tuple[int, int] = (40, 48), fmt: str = "PNG") -> bytes:
    """A one-colour image file (PNG unless ``fmt`` says otherwise)."""
    image = Image.new("RGB", size, colour)
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230), "dark": (5, 5, 5)}


def orientation_exif(orientation: int | None) -> bytes:
    """An EXIF block that holds only ``orientation`` (none: an empty block), for ``Image.save(exif=...)``."""
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    return exif.tobytes()


def make_settings(model: Path, **overrides: object) -> Settings:
    base: dict[str, object] = {"model_path": model, "max_batch_delay_ms": 2, "decode_threads": 2}
    return Settings(**{**base, **overrides})


def wait_ready(client: TestClient, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"not ready after {timeout} s: {client.get('/readyz').json()}")


class CountingSession:
    """Wraps an InferenceSession: counts ``run`` calls and the batch sizes, optionally sleeping in each."""

    def __init__(self, session: object, delay_s: float = 0.0):
        self.session, self.delay_s, self.batches = session, delay_s, []

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.batches.append(len(next(iter(feeds.values()))))
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.session.run(outputs, feeds)

    def __getattr__(self, name: str) -> object:
        return getattr(self.session, name)


def count_runs(client: TestClient, delay_s: float = 0.0) -> CountingSession:
    """Counts the runs of the served model's session, and of its shared session (batches beside another) in the same
    list."""
    model = client.app.state.lifecycle.serving.model
    whole, shared = model.session, model._shared
    model.session = counting = CountingSession(whole, delay_s)
    beside = counting if shared is whole else CountingSession(shared, delay_s)
    beside.batches = counting.batches
    model.share(beside)
    return counting


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """``python -m service`` in a subprocess on a free loopback port."""

    def __init__(self, model: Path, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        variables = {"CASTREAM_MODEL_PATH": str(model), "CASTREAM_HOST": "127.0.0.1", "CASTREAM_PORT": str(self.port)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=REPO,
            env={**os.environ, **variables, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.process.stdout.read()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready after {timeout} s")

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.stdout.read()


def tiny_inputs(*images: bytes) -> np.ndarray:
    """Image files preprocessed as the tiny models' metadata says, stacked [N, 3, crop, crop]."""
    prepare = Preprocessor(Preprocessing.from_dict(PREPROCESSING))
    return np.stack([prepare(Image.open(io.BytesIO(data)).convert("RGB")).input for data in images])


def run_directly(
    model_path: Path, batch: np.ndarray, names: tuple[str, ...] = ("logits", "attention", "class_maps")
) -> dict[str, np.ndarray]:
    """``names`` of the model file run by ONNX Runtime itself on ``batch``, without the service."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(list(names), {"image": batch}), strict=True))


def record_fetches(client: TestClient) -> list[list[str]]:
    """The output names of every ``session.run`` the client's served model makes from now on, in order (the real
    session still runs them)."""
    model = client.app.state.lifecycle.serving.model
    session, fetched = model.session, []

    class Recorder:
        def run(self, outputs, feeds):
            fetched.append(list(outputs))
            return session.run(outputs, feeds)

        def __getattr__(self, name):
            return getattr(session, name)

    model.session = Recorder()
    return fetched
