"""Settings are validated at start-up; messages name the environment variable. The docs list them all."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from service.contract import CPU, CUDA
from service.metrics import Metrics
from service.settings import PREFIX, Settings, SettingsError, load_settings, usable_cores
from tests.service.servicetools import REPO

DOCS = (REPO / "docs" / "service.md").read_text()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, model_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CASTREAM_MODEL_PATH", str(model_path))


def test_environment_is_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASTREAM_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("CASTREAM_PROVIDERS", " cuda , cpu ")
    monkeypatch.setenv("CASTREAM_API_KEY", "token")
    settings = load_settings()
    assert settings.max_batch_size == 16 and settings.provider_list == ["cuda", "cpu"]
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "token"
    assert "token" not in repr(settings)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CASTREAM_MODEL_PATH", "/nowhere/model.onnx", "CASTREAM_MODEL_PATH='/nowhere/model.onnx': no model file"),
        ("CASTREAM_MAX_BATCH_SIZE", "0", "CASTREAM_MAX_BATCH_SIZE='0': Input should be greater than or equal to 1"),
        ("CASTREAM_MAX_BATCH_DELAY_MS", "soon", "CASTREAM_MAX_BATCH_DELAY_MS='soon'"),
        ("CASTREAM_PORT", "70000", "CASTREAM_PORT='70000': Input should be less than or equal to 65535"),
        ("CASTREAM_PAD_BATCHES", "maybe", "CASTREAM_PAD_BATCHES='maybe'"),
        ("CASTREAM_PROVIDERS", "cuda,,cpu", "CASTREAM_PROVIDERS='cuda,,cpu'"),
        ("CASTREAM_API_KEY", "  ", "CASTREAM_API_KEY=<hidden>: is set but empty"),
        ("CASTREAM_MAX_QUEUE", "4", "CASTREAM_MAX_QUEUE=4 is smaller than CASTREAM_MAX_IMAGES_PER_REQUEST=16"),
        ("CASTREAM_WORKERS", "0", "CASTREAM_WORKERS='0': Input should be greater than or equal to 1"),
        ("CASTREAM_WORKERS", "65", "CASTREAM_WORKERS='65': Input should be less than or equal to 64"),
        ("CASTREAM_WORKERS", "two", "CASTREAM_WORKERS='two'"),
    ],
)
def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert message in str(error.value)


def test_each_worker_needs_room_for_the_largest_request_in_its_part_of_the_queue(monkeypatch) -> None:
    monkeypatch.setenv("CASTREAM_WORKERS", "4")
    monkeypatch.setenv("CASTREAM_MAX_QUEUE", "40")
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert (
        "CASTREAM_MAX_QUEUE=40 is the whole service's queue, and each of CASTREAM_WORKERS=4 processes gets 10 images "
        "of it, fewer than CASTREAM_MAX_IMAGES_PER_REQUEST=16, so the largest request could never be queued; raise "
        "CASTREAM_MAX_QUEUE to at least 64"
    ) in str(error.value)
    monkeypatch.setenv("CASTREAM_MAX_IMAGES_PER_REQUEST", "10")
    assert load_settings().workers == 4


def test_workers_share_the_queue_and_the_cores_when_the_threads_are_automatic() -> None:
    cores = usable_cores()
    settings = load_settings(workers=3, max_queue=50)
    shares = [settings.worker_share(i) for i in range(3)]
    assert [s.max_queue for s in shares] == [17, 17, 16]  # adding up to the whole
    assert {s.intra_op_threads for s in shares} == {max(1, cores // 3)}
    assert {s.decode_threads for s in shares} == {max(1, min(4, cores // 3))}
    explicit = load_settings(workers=2, intra_op_threads=3, decode_threads=2).worker_share(1)
    assert (explicit.intra_op_threads, explicit.decode_threads, explicit.max_queue) == (3, 2, 32)
    assert load_settings().workers == 1  # one process, as without the setting


@pytest.mark.parametrize(("cpu_max", "limit"), [("200000 100000", 2), ("150000 100000", 1), ("50000 100000", 1),
                                               ("max 100000", None), ("", None)])  # fmt: skip
def test_usable_cores_follow_a_cpu_quota(tmp_path: Path, cpu_max: str, limit: int | None) -> None:
    quota = tmp_path / "cpu.max"
    quota.write_text(cpu_max + "\n")
    everything = usable_cores(tmp_path / "missing")
    assert usable_cores(quota) == min(everything, limit or everything)


def test_docs_list_every_setting_with_its_default() -> None:
    rows = dict(re.findall(r"^\| `(CASTREAM_[A-Z_]+)` \| `?([^|`]*)`? \|", DOCS, flags=re.MULTILINE))
    names = {PREFIX + field.upper() for field in Settings.model_fields}
    assert set(rows) == names
    for field, info in Settings.model_fields.items():
        default = info.default
        shown = rows[PREFIX + field.upper()].strip()
        if default is None:
            assert shown == "unset", field
        else:
            assert shown == (str(default).lower() if isinstance(default, bool) else str(default)), field


def test_docs_list_every_metric() -> None:
    documented = set(re.findall(r"^\| `(castream_[a-z0-9_]+)` \|", DOCS, flags=re.MULTILINE))
    families = Metrics().registry.collect()
    exposed = {m.name + ("_total" if m.type == "counter" else "") for m in families if m.name.startswith("castream_")}
    assert documented == exposed


def test_batches_run_two_at_once_on_a_cpu_with_threads_to_share_and_one_at_a_time_on_a_gpu() -> None:
    assert load_settings(intra_op_threads=2).lanes(CPU) == (2, 1)
    assert load_settings(intra_op_threads=8).lanes(CPU) == (2, 4)
    assert load_settings(intra_op_threads=1).lanes(CPU) == (1, 1)  # nothing to share
    assert load_settings(intra_op_threads=8, concurrent_batches=4).lanes(CPU) == (4, 2)
    assert load_settings(intra_op_threads=2, concurrent_batches=1).lanes(CPU) == (1, 2)  # off: every thread, always
    assert load_settings(intra_op_threads=8).lanes(CUDA) == (1, 8)
    automatic, cores = load_settings().lanes(CPU), usable_cores()
    assert (load_settings().session_threads(), load_settings(intra_op_threads=3).session_threads()) == (cores, 3)
    assert automatic == ((2, cores // 2) if cores >= 2 else (1, 1))
    # Each of several workers shares its own part of the cores.
    assert load_settings(workers=2, intra_op_threads=0).worker_share(0).lanes(CPU)[0] == (2 if cores >= 4 else 1)
