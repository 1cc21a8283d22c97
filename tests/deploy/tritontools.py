"""A real Triton Inference Server for the tests: PyPI's nvidia-pytriton wheel in its own venv, and a runner.

The wheel ships ``tritonserver`` (2.51) with the Python backend and no ONNX Runtime backend. The venv lives in
``.cache/triton-venv`` (never the project's .venv: pytriton pins numpy below 2), is built on first use from PyPI
and reused while its package list is unchanged. Triton's model configuration protobuf comes from tritonclient.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from importlib import metadata, resources
from pathlib import Path
from types import ModuleType

import httpx
import numpy as np
import onnx
from google.protobuf import text_format
from onnx import helper

from export.triton import REQUEST_TIMEOUT_MS
from tests.deploy import venvs
from tests.service.servicetools import REPO, free_port

VENV = REPO / ".cache" / "triton-venv"
# ONNX Runtime at the project's own version, so both servers run the file with the same kernels.
PACKAGES = ("nvidia-pytriton==0.7.0", f"onnxruntime=={metadata.version('onnxruntime')}")
PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")


@functools.cache
def model_config_pb2() -> ModuleType:
    """tritonclient's ``model_config_pb2``, loaded from its file: importing it as ``tritonclient.grpc.…`` would need
    the grpc extra (grpcio, and a protobuf older than the one onnx runs with here) for a module that uses neither."""
    path = resources.files("tritonclient") / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_config(text: str):  # -> model_config_pb2.ModelConfig
    """``config.pbtxt`` parsed as Triton parses it; ``text_format.ParseError`` where it could not."""
    return text_format.Parse(text, model_config_pb2().ModelConfig())


def _site_packages() -> Path:
    (path,) = (VENV / "lib").glob("python3.*/site-packages")
    return path


def ensure_venv() -> Path:
    """The venv's folder, built where it is missing or stale; a failed build fails the test that needs it (no skip)."""
    venvs.ensure_venv(VENV, PACKAGES, _install_backend)
    return VENV


def _install_backend(venv: Path) -> None:
    # Triton's Python backend runs models in a stub built for one Python version; pytriton ships one per version
    # and copies the right one next to the backend, as done here once.
    server = _site_packages() / "pytriton" / "tritonserver"
    backend = venv / "backends" / "python"
    backend.mkdir(parents=True)
    for item in (server / "backends" / "python").iterdir():
        if item.is_file():
            shutil.copy2(item, backend / item.name)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copy2(server / "python_backend_stubs" / version / "triton_python_backend_stub", backend)


def python_backend_model(folder: Path) -> Path:
    """Turns a model folder of ``export.triton`` into one served by the Python backend; returns its config."""
    config_path = folder / "config.pbtxt"
    config = parse_config(config_path.read_text())
    config.ClearField("platform")
    config.backend = "python"
    for version in config.version_policy.specific.versions:
        shutil.copy(PYTHON_MODEL, folder / str(version) / "model.py")
    config_path.write_text(text_format.MessageToString(config))
    return config_path


class TritonServer:
    """``tritonserver`` on a model repository, HTTP and metrics on free loopback ports, gRPC off."""

    def __init__(self, repository: Path, log: Path, *extra: str):
        venv = ensure_venv()
        site = _site_packages()
        self.port, self.metrics_port = free_port(), free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.log = log
        env = dict(os.environ)
        libraries = [str(site / "nvidia_pytriton.libs"), *filter(None, [env.get("LD_LIBRARY_PATH")])]
        env["LD_LIBRARY_PATH"] = ":".join(libraries)
        env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"  # the Python backend's stub runs the venv's Python
        command = [
            str(site / "pytriton" / "tritonserver" / "bin" / "tritonserver"),
            f"--model-repository={repository}",
            f"--backend-directory={venv / 'backends'}",
            "--http-address=127.0.0.1",
            f"--http-port={self.port}",
            "--allow-grpc=false",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--exit-timeout-secs=5",
            *extra,
        ]
        self._log_file = log.open("w")
        self.process = subprocess.Popen(command, stdout=self._log_file, stderr=subprocess.STDOUT, env=env)

    def output(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log.read_text(errors="replace")

    def wait_exit(self, timeout: float = 60) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"tritonserver still running after {timeout} s:\n{self.output()[-4000:]}") from None

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"tritonserver exited with {self.process.returncode}:\n{self.output()[-4000:]}")
            try:
                if httpx.get(f"http://{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"tritonserver not ready after {timeout} s:\n{self.output()[-4000:]}")

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log_file.close()


# Triton's type for each numpy type of an ONNX tensor (written here independently of export.triton's table).
TRITON_TYPES = {np.float32: "TYPE_FP32", np.float16: "TYPE_FP16", np.int64: "TYPE_INT64", np.uint8: "TYPE_UINT8"}


def graph_tensors(path: Path) -> dict[str, tuple[str, list[int]]]:
    """Every graph input and output: Triton type name and shape without the (symbolic) batch axis."""
    graph = onnx.load(str(path)).graph
    initializers = {init.name for init in graph.initializer}
    tensors = {}
    for value in (*graph.input, *graph.output):
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param, f"{value.name} has a fixed batch axis"
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).type
        tensors[value.name] = (TRITON_TYPES[dtype], [d.dim_value for d in dims[1:]])
    return tensors


def read_config(folder: Path):
    return parse_config((folder / "config.pbtxt").read_text())


def check_repository(folder: Path, model: Path) -> object:
    """The checks every repository passes: files, tensors against the graph, labels, batching, warm-up."""
    config = read_config(folder)
    assert config.name == folder.name and config.platform == "onnxruntime_onnx"
    (version,) = config.version_policy.specific.versions
    assert (folder / str(version) / "model.onnx").read_bytes() == model.read_bytes()
    props = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    assert config.name == props["model_name"]
    assert (folder / "labels.txt").read_text().splitlines() == json.loads(props["classes"])

    expected = graph_tensors(model)
    declared = {t.name: (t, "input") for t in config.input} | {t.name: (t, "output") for t in config.output}
    assert set(declared) == set(expected)
    for name, (tensor, _) in declared.items():
        data_type, dims = expected[name]
        assert model_config_pb2().DataType.Name(tensor.data_type) == data_type, name
        assert list(tensor.dims) == dims, name
    assert [t.name for t in config.input] == ["image"]
    assert {t.name: t.label_filename for t in config.output if t.label_filename} == {"logits": "labels.txt"}

    assert config.max_batch_size >= 1
    policy = config.dynamic_batching.default_queue_policy
    assert policy.timeout_action == policy.REJECT and policy.max_queue_size >= config.max_batch_size
    assert policy.default_timeout_microseconds == REQUEST_TIMEOUT_MS * 1000
    assert config.dynamic_batching.max_queue_delay_microseconds == 0, "a lone request never waits"
    (group,) = config.instance_group
    assert group.count == 1
    threads = {key: int(value.string_value) for key, value in config.parameters.items()}
    assert set(threads) == {"intra_op_thread_count", "inter_op_thread_count"} and min(threads.values()) >= 1

    assert config.model_warmup
    for sample in config.model_warmup:
        assert 1 <= sample.batch_size <= config.max_batch_size
        (warm,) = sample.inputs.items()
        name, spec = warm
        assert name == "image" and spec.zero_data and list(spec.dims) == expected["image"][1]
        assert spec.data_type == config.input[0].data_type
    return config
