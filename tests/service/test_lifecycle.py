"""Start-up, readiness, warm-up failure, bad model files, providers, padding and graceful shutdown."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from service.lifecycle import batch_sizes
from service.metadata import ModelError
from service.model import OnnxModel
from service.providers import check_loaded, requested_providers
from tests.service.servicetools import (
    COLOURS,
    PREPROCESSING,
    REPO,
    build_model,
    count_runs,
    free_port,
    save_model,
    solid_png,
    wait_ready,
)


def test_readyz_is_503_until_warm_up_finishes(app_client, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    original = OnnxModel.warm_up

    def slow_warm_up(self: OnnxModel, sizes: list[int]) -> None:
        release.wait(10)
        original(self, sizes)

    monkeypatch.setattr(OnnxModel, "warm_up", slow_warm_up)
    client = app_client(ready=False, retry_after_s=7)
    starting = client.get("/readyz")
    assert starting.status_code == 503 and starting.json()["code"] == "starting"
    assert client.get("/healthz").status_code == 200
    refused = client.post("/classify", files=[("file", solid_png(COLOURS["red"]))])
    assert refused.status_code == 503 and refused.json()["code"] == "starting"
    assert refused.headers["retry-after"] == "7"  # CASTREAM_RETRY_AFTER_S
    assert "castream_ready 0.0" in client.get("/metrics").text
    release.set()
    deadline = time.monotonic() + 10
    while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.get("/readyz").json() == {"status": "ready"}
    assert client.post("/classify", files=[("file", solid_png(COLOURS["red"]))]).status_code == 200


def test_the_serving_object_is_published_once_warm_and_cannot_change(app_client, monkeypatch) -> None:
    release = threading.Event()
    original = OnnxModel.warm_up

    def slow_warm_up(self: OnnxModel, sizes: list[int]) -> None:
        release.wait(10)
        original(self, sizes)

    monkeypatch.setattr(OnnxModel, "warm_up", slow_warm_up)
    client = app_client(ready=False)
    lifecycle = client.app.state.lifecycle
    assert lifecycle.serving is None
    for path in ("/v1/model", "/v2/models/tiny-ca"):  # every route that needs the model answers 503 until then
        response = client.get(path)
        assert response.status_code == 503 and response.headers["retry-after"] == "1", path
    release.set()
    wait_ready(client)
    serving = lifecycle.serving
    assert serving is not None and serving.model.info.name == "tiny-ca"
    with pytest.raises(dataclasses.FrozenInstanceError):
        serving.model = None  # type: ignore[misc]
    assert client.get("/v1/model").json()["name"] == "tiny-ca"
    assert lifecycle.serving is serving


def test_warm_up_that_contradicts_the_metadata_fails_liveness(app_client, tmp_path) -> None:
    model = save_model(tmp_path / "three.onnx", classes=json.dumps(["a", "b", "c"]))  # the graph gives 4 logits
    client = app_client(model, ready=False)
    deadline = time.monotonic() + 10
    while client.get("/healthz").status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.get("/healthz").status_code == 503
    assert client.get("/readyz").json()["code"] == "failed"


def preprocessing(**changes: object) -> str:
    return json.dumps({**PREPROCESSING, **changes})


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (lambda: b"definitely not onnx", "cannot load ONNX model"),
        (lambda: build_model(model_name=None), "'model_name' is missing"),
        (lambda: build_model(classes="[]"), "non-empty JSON list"),
        (lambda: build_model(classes="not json"), "'classes' is invalid"),
        (lambda: build_model(castream_format="9"), "castream_format '9' is not supported"),
        (lambda: build_model("gap", pooling="ca"), "needs input 'image' and outputs"),
        (lambda: build_model(preprocessing=preprocessing(crop=64)), r"crop needs \[N, 3, 64, 64\]"),
        (lambda: build_model(preprocessing=preprocessing(layout="NHWC")), "NHWC/float32 is not supported"),
        (lambda: build_model(preprocessing=preprocessing(interpolation="cubic")), "'cubic' is not one of"),
    ],
    ids=["not-onnx", "no-name", "no-classes", "classes-not-json", "future-format", "no-attention-output",
         "crop-mismatch", "layout", "interpolation"],
)  # fmt: skip
def test_bad_model_files_fail_start_up_clearly(app_client, tmp_path, model, message: str) -> None:
    content = model()
    path = tmp_path / "bad.onnx"
    path.write_bytes(content if isinstance(content, bytes) else content.SerializeToString())
    with pytest.raises(ModelError, match=message):
        app_client(path)


def test_providers_resolve_aliases_and_refuse_what_is_missing() -> None:
    assert requested_providers(["auto"]) == (["CPUExecutionProvider"], True)
    assert requested_providers(["cpu"]) == (["CPUExecutionProvider"], False)
    with pytest.raises(ModelError, match="CASTREAM_PROVIDERS asks for \\['NoSuchExecutionProvider'\\]"):
        requested_providers(["NoSuchExecutionProvider"])
    with pytest.raises(ModelError, match="loaded only"):
        check_loaded(["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"], auto=False)
    check_loaded(["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"], auto=True)


def test_unavailable_provider_fails_start_up(app_client) -> None:
    with pytest.raises(ModelError, match="CASTREAM_PROVIDERS"):
        app_client(providers="tensorrt")


def test_padding_runs_bucket_sizes_and_returns_only_real_images(app_client) -> None:
    assert batch_sizes(8) == (1, 2, 4, 8) and batch_sizes(6) == (1, 2, 4, 6) and batch_sizes(1) == (1,)
    client = app_client(pad_batches="on", max_batch_size=8, max_batch_delay_ms=0)
    session = count_runs(client)
    names = ["red", "green", "blue"]
    response = client.post("/classify", files=[("file", solid_png(COLOURS[n])) for n in names])
    assert [p["top_k"][0]["label"] for p in response.json()["predictions"]] == names
    assert session.batches == [4]


def run_service(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_python_m_service_refuses_bad_settings_naming_the_variable(model_path) -> None:
    result = run_service({"CASTREAM_MODEL_PATH": str(model_path), "CASTREAM_MAX_BATCH_SIZE": "lots"})
    assert result.returncode == 2
    assert "CASTREAM_MAX_BATCH_SIZE='lots'" in result.stderr and "Traceback" not in result.stderr


def test_python_m_service_fails_start_up_on_a_corrupt_model(tmp_path) -> None:
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(b"\x08\x07garbage")
    result = run_service({"CASTREAM_MODEL_PATH": str(path), "CASTREAM_PORT": str(free_port())})
    assert result.returncode != 0
    assert "cannot load ONNX model" in result.stderr + result.stdout


def test_uvicorn_factory_serves_the_app(model_path) -> None:
    port = free_port()
    env = {**os.environ, "CASTREAM_MODEL_PATH": str(model_path)}
    command = [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory", "--port", str(port)]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, status = time.monotonic() + 30, None
        while status != 200 and time.monotonic() < deadline:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/readyz").status_code
            except httpx.TransportError:
                time.sleep(0.1)
        assert status == 200
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(10)


def test_every_thread_of_the_service_may_run_on_every_core_it_may(live_server) -> None:
    # ONNX Runtime pins its own threads, one to a core, when left to count them; the service counts them itself.
    server = live_server()
    pid = server.process.pid
    cores = os.sched_getaffinity(pid)
    threads = {task: os.sched_getaffinity(int(task)) for task in os.listdir(f"/proc/{pid}/task")}
    assert len(threads) > 2
    assert {task: cpus for task, cpus in threads.items() if cpus != cores} == {}


def test_a_session_opened_with_the_default_threads_pins_none(model_path) -> None:
    # In a process of its own: sessions other tests opened elsewhere (the export's checks) may have pinned threads.
    script = (
        "import os, sys; from pathlib import Path; from service.model import load_model\n"
        "model = load_model(Path(sys.argv[1]), ['cpu'])\n"
        "cores = os.sched_getaffinity(0)\n"
        "print(sorted(t for t in os.listdir('/proc/self/task') if os.sched_getaffinity(int(t)) != cores))\n"
    )
    assert in_own_process(script, model_path).strip() == "[]"


def test_onnx_runtime_threads_stop_spinning_when_a_run_ends(shipped_onnx) -> None:
    # They spin between the operators of a run; left spinning after it, they took about 46 ms of CPU in the next
    # 300 ms on a 2-core EPYC, CPU that decoding and the event loop need between runs.
    script = (
        "import sys, time; import numpy as np; from pathlib import Path; from service.model import load_model\n"
        "model = load_model(Path(sys.argv[1]), ['cpu'], intra_threads=2)\n"
        "crop = model.info.preprocessing.crop\n"
        "batch = np.random.default_rng(0).standard_normal((1, 3, crop, crop), dtype=np.float32)\n"
        "for _ in range(3): model.run(batch)\n"
        "idle = time.process_time(); time.sleep(0.3)\n"
        "print(time.process_time() - idle)\n"
    )
    assert float(in_own_process(script, shipped_onnx)) < 0.01


def in_own_process(script: str, model: Path) -> str:
    """What Python ``script`` prints, run in a fresh interpreter with ``model``'s path as its argument."""
    result = subprocess.run(
        [sys.executable, "-c", script, str(model)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_sigterm_drains_readiness_then_finishes_accepted_requests(live_server) -> None:
    server = live_server(CASTREAM_DRAIN_DELAY_S="1.0", CASTREAM_MAX_BATCH_DELAY_MS="1500")
    result: dict[str, httpx.Response] = {}

    def slow_request() -> None:  # waits ~1.5 s in the batcher for company that never comes
        files = [("file", ("red.png", solid_png(COLOURS["red"])))]
        result["response"] = httpx.post(f"{server.url}/classify", files=files, timeout=30)

    worker = threading.Thread(target=slow_request)
    worker.start()
    deadline = time.monotonic() + 10
    while "castream_queue_depth 1.0" not in httpx.get(f"{server.url}/metrics").text:
        assert time.monotonic() < deadline, "the request never reached the queue"
        time.sleep(0.02)
    server.process.send_signal(signal.SIGTERM)
    readiness = httpx.get(f"{server.url}/readyz")
    assert readiness.status_code == 503 and readiness.json()["code"] == "draining"
    worker.join(30)
    assert result["response"].status_code == 200
    assert result["response"].json()["predictions"][0]["top_k"][0]["label"] == "red"
    server.process.wait(30)
    assert server.process.returncode in (0, -signal.SIGTERM)
    log = server.process.stdout.read()
    assert "draining" in log and "Application shutdown complete" in log
