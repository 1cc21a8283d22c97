"""The Triton model repository of export.triton: Triton's own protobuf against the ONNX graph, then a real tritonserver.

The fast tests parse ``config.pbtxt`` with Triton's ``ModelConfig`` message and compare every tensor with the graph.
The slow ones run PyPI's tritonserver 2.51 (nvidia-pytriton, built into .cache/triton-venv on first use): it has no
ONNX Runtime backend, so the repository as written must be read and fail only for that backend; and the same
configuration with ``backend: "python"`` (tests/deploy/triton_python_model.py running ONNX Runtime) must answer
tritonclient exactly as castream's own /v2 does for the same file and the same images.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.http as triton
import yaml
from onnx import TensorProto, helper

from export.triton import DEFAULTS, REQUEST_TIMEOUT_MS, TritonOptions, write_repository
from export.verify import FP32, allowed_error
from service.settings import Settings
from tests.deploy.deploytools import K8S, container_env
from tests.deploy.tritontools import (
    TritonServer,
    check_repository,
    model_config_pb2,
    python_backend_model,
    read_config,
)
from tests.runs import ExportedClassifier
from tests.service.servicetools import REPO, LiveServer, build_model, save_model


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("triton-models")
    models = {kind: save_model(folder / f"tiny-{kind}.onnx", kind) for kind in ("ca", "gap")}
    models["fp16"] = folder / "tiny-fp16.onnx"
    onnx.save(half_model(), str(models["fp16"]))
    return models


MISSING_BACKEND = "unable to find backend library for backend 'onnxruntime'"
UNREADABLE = ("failed to read text proto", "Poll failed")


def half_model() -> onnx.ModelProto:
    """A graph with float16 inputs and outputs: logits are the channel means, attention the pixels' mean."""
    half = TensorProto.FLOAT16
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["logits"], axes=[2, 3], keepdims=0),
            helper.make_node("ReduceMean", ["image"], ["attention"], axes=[1], keepdims=0),
        ],
        "tiny-fp16",
        [helper.make_tensor_value_info("image", half, ["N", 3, 32, 32])],
        [
            helper.make_tensor_value_info("logits", half, ["N", 3]),
            helper.make_tensor_value_info("attention", half, ["N", 32, 32]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    reference = {p.key: p.value for p in build_model("ca").metadata_props}
    props = {**reference, "model_name": "tiny-fp16", "precision": "fp16", "classes": json.dumps(["r", "g", "b"])}
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("kind", ["ca", "gap", "fp16"])
@pytest.mark.parametrize("instances", ["cpu", "gpu"])
def test_config_follows_tritons_protobuf_and_the_graph(
    tiny_models: dict[str, Path], tmp_path: Path, kind: str, instances: str
) -> None:
    folder = write_repository(tiny_models[kind], tmp_path, TritonOptions(kind=instances))
    config = check_repository(folder, tiny_models[kind])
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]
    assert sorted(p.name for p in folder.iterdir()) == ["1", "config.pbtxt", "labels.txt"]
    (group,) = config.instance_group
    assert group.kind == (group.KIND_GPU if instances == "gpu" else group.KIND_CPU)
    batches = [sample.batch_size for sample in config.model_warmup]
    assert batches == ([1, config.max_batch_size] if instances == "gpu" else [1])  # CUDA warms each shape
    if kind == "fp16":
        assert {t.name: t.data_type for t in (*config.input, *config.output)} == dict.fromkeys(
            ["image", "logits", "attention"], model_config_pb2().DataType.Value("TYPE_FP16")
        )


def test_defaults_follow_the_service_and_its_kubernetes_manifests() -> None:
    fields = Settings.model_fields
    assert DEFAULTS["cpu"]["max_batch_size"] == fields["max_batch_size"].default
    assert DEFAULTS["cpu"]["max_queue"] == fields["max_queue"].default
    assert REQUEST_TIMEOUT_MS == fields["request_timeout_ms"].default
    for kind in ("cpu", "gpu"):
        (main,) = yaml.safe_load((K8S / kind / "deployment.yaml").read_text())["spec"]["template"]["spec"]["containers"]
        env = container_env(main)
        assert DEFAULTS[kind]["max_batch_size"] == int(env["CASTREAM_MAX_BATCH_SIZE"])
        assert DEFAULTS[kind]["max_queue"] == int(env["CASTREAM_MAX_QUEUE"])
        assert DEFAULTS[kind]["intra_op_threads"] == int(env["CASTREAM_INTRA_OP_THREADS"])
        assert REQUEST_TIMEOUT_MS == int(env["CASTREAM_REQUEST_TIMEOUT_MS"])


def test_options_reach_the_config(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    options = TritonOptions(
        name="castream", version=3, max_batch_size=4, max_queue=9, request_timeout_ms=250, batch_delay_us=500,
        instances=2, intra_op_threads=3, inter_op_threads=2,
    )  # fmt: skip
    folder = write_repository(tiny_models["ca"], tmp_path, options)
    config = read_config(folder)
    assert folder.name == config.name == "castream" and (folder / "3" / "model.onnx").is_file()
    assert list(config.version_policy.specific.versions) == [3] and config.max_batch_size == 4
    policy = config.dynamic_batching.default_queue_policy
    assert (policy.max_queue_size, policy.default_timeout_microseconds) == (9, 250_000)
    assert config.dynamic_batching.max_queue_delay_microseconds == 500 and config.instance_group[0].count == 2
    assert {k: v.string_value for k, v in config.parameters.items()} == {
        "intra_op_thread_count": "3",
        "inter_op_thread_count": "2",
    }


@pytest.mark.parametrize(
    "options, message",
    [
        ({"kind": "tpu"}, "unknown instance kind"),
        ({"name": "../up"}, "not a folder name"),
        ({"max_batch_size": 0}, "max_batch_size must be positive"),
        ({"batch_delay_us": -1}, "batch_delay_us"),
    ],
)
def test_bad_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TritonOptions(**options)


def test_a_graph_without_a_symbolic_batch_axis_is_refused(tmp_path: Path) -> None:
    model = build_model("gap")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # replaces the symbolic "N"
    path = tmp_path / "fixed.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ValueError, match="'image' has no symbolic batch axis first"):
        write_repository(path, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_class_names_that_do_not_match_the_logits_are_refused(tmp_path: Path) -> None:
    path = save_model(tmp_path / "odd.onnx", "gap", classes=json.dumps(["a", "b"]))
    with pytest.raises(ValueError, match="metadata names 2 classes"):
        write_repository(path, tmp_path / "repo")


def test_command_line(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    command = [sys.executable, "-m", "export.triton", "--model", str(tiny_models["ca"]), "--out", str(tmp_path)]
    done = subprocess.run([*command, "--kind", "gpu"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"wrote {tmp_path / 'tiny-ca'}" in done.stdout
    (group,) = read_config(tmp_path / "tiny-ca").instance_group
    assert group.kind == group.KIND_GPU
    missing = [sys.executable, "-m", "export.triton", "--model", str(tmp_path / "none.onnx"), "--out", str(tmp_path)]
    done = subprocess.run(missing, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no model file" in done.stderr


# The real tritonserver


@pytest.fixture(scope="module")
def exported(model_folder: Path) -> Path:
    """The tiny ResNet-18 CA-Stream run, exported (tests/deploy/conftest.py)."""
    return model_folder / "castream.onnx"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_triton_reads_the_onnx_runtime_configuration(exported: Path, tmp_path: Path, kind: str) -> None:
    folder = write_repository(exported, tmp_path / "repo", TritonOptions(kind=kind))
    check_repository(folder, exported)
    server = TritonServer(tmp_path / "repo", tmp_path / "triton.log")
    try:
        code = server.wait_exit()
    finally:
        server.stop()
    log = server.output()
    # The file was read and checked as far as Triton goes without the backend: what is missing is only the backend.
    assert code != 0
    assert re.search(rf"failed to load '{folder.name}' version 1: .*{re.escape(MISSING_BACKEND)}", log), log[-3000:]
    assert not any(text in log for text in UNREADABLE), log[-3000:]


@pytest.mark.slow
def test_triton_refuses_a_configuration_it_cannot_read(exported: Path, tmp_path: Path) -> None:
    """The control for the test above: a misspelt field is reported as such, before any backend is looked for."""
    folder = write_repository(exported, tmp_path / "repo")
    config = folder / "config.pbtxt"
    config.write_text(config.read_text().replace("max_queue_size", "max_queue_length"))
    server = TritonServer(tmp_path / "repo", tmp_path / "triton.log")
    try:
        assert server.wait_exit() != 0
    finally:
        server.stop()
    log = server.output()
    assert f"failed to read text proto from {config}" in log and MISSING_BACKEND not in log


def _infer(
    client: triton.InferenceServerClient,
    model: str,
    images: np.ndarray,
    names: tuple[str, ...] = ("logits", "attention", "class_maps"),
) -> dict[str, np.ndarray]:
    tensor = triton.InferInput("image", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=True)
    outputs = [triton.InferRequestedOutput(name, binary_data=True) for name in names]
    result = client.infer(model, [tensor], outputs=outputs)
    return {name: result.as_numpy(name) for name in names}


def _classify(client: triton.InferenceServerClient, model: str, images: np.ndarray, count: int) -> list[list[tuple]]:
    tensor = triton.InferInput("image", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=True)
    output = triton.InferRequestedOutput("logits", binary_data=False, class_count=count)
    rows = client.infer(model, [tensor], outputs=[output]).as_numpy("logits")
    decoded = [[(v.decode() if isinstance(v, bytes) else v).split(":") for v in row] for row in rows]
    return [[(float(score), int(index), label) for score, index, label in row] for row in decoded]


def _close(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """Within the export's float32 tolerance: logits and class maps on the logits' scale, attention on its own."""
    assert set(actual) == set(expected)
    for name in expected:
        tolerance, _ = allowed_error(name, FP32, expected)
        np.testing.assert_allclose(actual[name], expected[name], rtol=0, atol=tolerance, err_msg=name)


@pytest.mark.slow
def test_triton_python_backend_answers_as_castreams_v2(exported: Path, tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    folder = write_repository(exported, repository)
    python_backend_model(folder)
    # A second model of the same file with a batch delay, so that concurrent requests surely share a batch.
    batched = write_repository(exported, repository, TritonOptions(name="castream-batched", batch_delay_us=500_000))
    python_backend_model(batched)
    name = folder.name
    images = np.random.default_rng(0).normal(0, 1, (5, 3, 64, 64)).astype(np.float32)

    server = TritonServer(repository, tmp_path / "triton.log", "--log-verbose=1")
    castream = LiveServer(exported)
    try:
        server.wait_ready()
        castream.wait_ready()
        ours = triton.InferenceServerClient(url=castream.url.removeprefix("http://"), network_timeout=60)
        theirs = triton.InferenceServerClient(url=server.url, network_timeout=60)
        assert theirs.is_model_ready(name) and ours.is_model_ready(name)
        # Ready only after warm-up: Triton ran the zero image of the model's size before reporting ready.
        log = server.output()
        warmed = re.search(rf"model '{name}' instance \S+ is running warmup sample 'zero_image_batch_1'", log)
        assert warmed and warmed.start() < log.index(f"successfully loaded '{name}'"), log[-3000:]

        # The same tensors, names and shapes in both servers' metadata (castream adds its encoded-image input).
        meta_ours, meta_theirs = ours.get_model_metadata(name), theirs.get_model_metadata(name)
        assert meta_theirs["outputs"] == meta_ours["outputs"]
        assert meta_theirs["inputs"] == [i for i in meta_ours["inputs"] if i["name"] == "image"]

        expected = _infer(ours, name, images)
        _close(_infer(theirs, name, images), expected)
        _close(_infer(theirs, name, images[:1]), {k: v[:1] for k, v in expected.items()})

        # The classification extension: castream's labels from labels.txt, in the same order, with the same scores.
        top_ours, top_theirs = _classify(ours, name, images, 3), _classify(theirs, name, images, 3)
        classes = json.loads({p.key: p.value for p in onnx.load(str(exported)).metadata_props}["classes"])
        for row_ours, row_theirs in zip(top_ours, top_theirs, strict=True):
            assert [(i, label) for _, i, label in row_theirs] == [(i, label) for _, i, label in row_ours]
            assert all(label == classes[i] for _, i, label in row_theirs)
            np.testing.assert_allclose([s for s, _, _ in row_theirs], [s for s, _, _ in row_ours], atol=1e-4)

        # Concurrent single-image requests: one batch for Triton's dynamic batcher, each answer its own image's.
        answers: dict[int, dict[str, np.ndarray]] = {}

        def one(index: int) -> None:
            client = triton.InferenceServerClient(url=server.url, network_timeout=60)
            answers[index] = _infer(client, batched.name, images[index : index + 1])
            client.close()

        def counts() -> tuple[int, int]:
            (stats,) = theirs.get_inference_statistics(batched.name)["model_stats"]
            return int(stats["inference_count"]), int(stats["execution_count"])

        before = counts()  # the warm-up's run is counted too
        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(answers) == [0, 1, 2, 3]
        for index, answer in answers.items():
            _close(answer, {k: v[index : index + 1] for k, v in expected.items()})
        inferences, executions = (after - start for after, start in zip(counts(), before, strict=True))
        assert inferences == 4 and executions < 4, (inferences, executions)

        # Triton keeps its own metrics, per model.
        assert re.search(rf'nv_inference_request_success\{{model="{name}",version="1"\}} [1-9]', server.metrics())
        ours.close()
        theirs.close()
    finally:
        castream.stop()
        server.stop()


@pytest.mark.slow
def test_triton_python_backend_serves_the_class_activation_maps_of_torchvision_classifiers(
    classifiers: dict[str, ExportedClassifier], tmp_path: Path
) -> None:
    """A ResNet-50 and a ConvNeXt-Tiny exported as they are (tests/conftest.py): both in one repository, each answering
    Triton's clients as castream's /v2 does for its file, class maps that add up to the logits included."""
    repository, names = tmp_path / "repo", ("logits", "class_maps")
    folders = {backbone: write_repository(exported.model, repository) for backbone, exported in classifiers.items()}
    for backbone, folder in folders.items():
        check_repository(folder, classifiers[backbone].model)
        python_backend_model(folder)
    server = TritonServer(repository, tmp_path / "triton.log")
    try:
        server.wait_ready()
        theirs = triton.InferenceServerClient(url=server.url, network_timeout=60)
        for backbone, folder in folders.items():
            model = classifiers[backbone].model
            crop = json.loads({p.key: p.value for p in onnx.load(str(model)).metadata_props}["preprocessing"])["crop"]
            images = np.random.default_rng(5).normal(0, 1, (2, 3, crop, crop)).astype(np.float32)
            castream = LiveServer(model)
            try:
                castream.wait_ready()
                ours = triton.InferenceServerClient(url=castream.url.removeprefix("http://"), network_timeout=60)
                meta_ours, meta_theirs = ours.get_model_metadata(folder.name), theirs.get_model_metadata(folder.name)
                assert [o["name"] for o in meta_theirs["outputs"]] == ["logits", "class_maps", "embedding"]
                assert meta_theirs["outputs"] == meta_ours["outputs"]
                expected = _infer(ours, folder.name, images, names)
                answer = _infer(theirs, folder.name, images, names)
                _close(answer, expected)
                # The maps split the logits exactly: what they leave out is the same for every image (the head's own).
                constant = answer["logits"] - answer["class_maps"].sum(axis=(2, 3))
                tolerance, _ = allowed_error("class_maps", FP32, expected)
                np.testing.assert_allclose(constant[0], constant[1], rtol=0, atol=2 * tolerance)
                top = _classify(theirs, folder.name, images, 2)
                assert [[i for _, i, _ in row] for row in top] == [
                    [i for _, i, _ in row] for row in _classify(ours, folder.name, images, 2)
                ]
                ours.close()
            finally:
                castream.stop()
        theirs.close()
    finally:
        server.stop()
