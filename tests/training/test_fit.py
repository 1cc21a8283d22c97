"""The training command end to end: run folder contents, ImageFolder + local weights, resume, DDP."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from training import checkpoint
from training.files import umask
from training.fit import main, parse_args

ROOT = Path(__file__).resolve().parents[2]
QUICK = [
    "--image-size",
    "64",
    "--synthetic-train",
    "128",
    "--synthetic-val",
    "64",
    "--batch-size",
    "32",
    "--no-progress",
]


def _run(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs
    )


def test_run_folder_records_config_revision_checkpoint_and_metrics(tiny_run: Path) -> None:
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["model"] == {"backbone": "resnet18", "num_classes": 10, "stream_taps": "all"}
    assert config["runtime"]["precision"] == "auto" and config["runtime"]["autocast"] in ("fp32", "bf16")
    assert config["options"]["recipe"] == "paper" and config["plan"][-1][1]["optimizer"] == "sgd"
    assert config["options"]["epochs"] == 1
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", config["git_revision"])  # the tests run in a git checkout
    assert [stage for stage, _ in config["plan"]] == ["full", "stream"]
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    for key in ("val_top1_gap", "val_top1_ca"):
        assert 0.0 <= metrics[key] <= 100.0
    assert set(metrics["stages"]) == {"full", "stream"}
    assert checkpoint.load(tiny_run / "castream.pt").finished
    for name in ("castream.pt", "config.json", "metrics.json"):  # readable by others, as open() would make them
        assert stat.S_IMODE((tiny_run / name).stat().st_mode) == 0o666 & ~umask(), name


def _image_folder(root: Path, classes: int = 2, per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k in range(classes):
            folder = root / split / f"class_{k}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 60, size=(40, 52, 3), dtype=np.uint8)
                pixels[..., k] += 180  # a colour per class
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_resnet50_on_an_image_folder_with_weights_from_a_local_file(tmp_path: Path) -> None:
    data = _image_folder(tmp_path / "data")
    weights_file = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), weights_file)
    out = tmp_path / "run"
    code = main(
        [
            "--backbone",
            "resnet50",
            "--weights",
            str(weights_file),
            "--data",
            str(data),
            "--image-size",
            "64",
            "--epochs",
            "1",
            "--baseline-epochs",
            "1",
            "--batch-size",
            "4",
            "--workers",
            "0",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    record = checkpoint.load(out / "castream.pt")
    assert record.classes == ("class_0", "class_1")
    assert record.data.kind == "imagefolder"
    # A pretrained backbone whose classifier does not fit gets a linear probe, then the stream.
    assert list(record.completed) == ["probe", "stream"]
    assert record.preprocessing.to_dict() == {
        "resize": 73,
        "crop": 64,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "interpolation": "bilinear",
    }
    original = torch.load(weights_file, weights_only=True)
    trained = record.state_dict
    assert torch.equal(trained["backbone.net.layer3.0.conv1.weight"], original["layer3.0.conv1.weight"])
    assert torch.equal(trained["backbone.net.bn1.running_mean"], original["bn1.running_mean"])
    assert trained["backbone.net.fc.weight"].shape == (2, 2048)


def test_bad_data_folder_and_bad_flags_fail_clearly(tmp_path: Path, capsys) -> None:
    assert main(["--data", str(tmp_path), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    with pytest.raises(SystemExit):
        parse_args(["--batch-size", "0"])
    assert "--batch-size must be positive" in capsys.readouterr().err


def test_a_run_killed_mid_epoch_resumes_and_finishes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "training.fit",
        *QUICK,
        "--synthetic-train",
        "256",
        "--baseline-epochs",
        "3",
        "--epochs",
        "2",
        "--out",
        str(out),
    ]
    process = _run(command)
    deadline = time.monotonic() + 300
    path = out / "castream.pt"
    while not path.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert path.exists(), process.communicate()[0]
    process.send_signal(signal.SIGKILL)  # somewhere in the second epoch
    process.wait()
    interrupted = checkpoint.load(path)
    assert interrupted.stage == "full" and interrupted.resume_point["epoch"] < 3
    resumed = _run([*command, "--resume"])
    log = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, log
    assert "resuming" in log
    final = checkpoint.load(path)
    assert final.finished
    assert [r["epoch"] for r in final.completed["full"]["history"]] == [1, 2, 3]
    assert [r["epoch"] for r in final.completed["stream"]["history"]] == [1, 2]
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]


def _torchrun(port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port), *args]


def test_two_process_torchrun_with_gloo_on_a_fresh_cache(tmp_path: Path) -> None:
    out, cache = tmp_path / "ddp", tmp_path / "cache"  # both ranks generate and write the same new cache files
    process = _run(
        _torchrun(29533, "-m", "training.fit", *QUICK, "--epochs", "1", "--baseline-epochs", "1", "--out", str(out))
        + ["--cache-dir", str(cache)]
    )
    try:
        log = process.communicate(timeout=600)[0]
    finally:
        process.kill()
    assert process.returncode == 0, log
    assert sorted(p.suffix for p in cache.iterdir()) == [".npz", ".npz"]  # train and val, no temporary left
    config = json.loads((out / "config.json").read_text())
    assert config["runtime"]["world_size"] == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stages"]["stream"]["history"][0]["epoch"] == 1
    assert 0.0 <= metrics["val_top1_ca"] <= 100.0


def test_an_exception_on_one_rank_ends_every_rank_with_the_error(tmp_path: Path) -> None:
    script = tmp_path / "fail_on_rank_1.py"
    script.write_text(
        "import os, sys\n"
        "from training import pipeline\n"
        "real = pipeline.train_stage\n"
        "def train_stage(model, stage, *args, **kwargs):\n"
        "    if stage == 'stream' and os.environ['RANK'] == '1':\n"
        "        raise RuntimeError('injected failure on rank 1')\n"
        "    return real(model, stage, *args, **kwargs)\n"
        "pipeline.train_stage = train_stage\n"
        "from training.fit import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out = tmp_path / "failing"
    process = _run(
        _torchrun(29534, str(script), *QUICK, "--epochs", "1", "--baseline-epochs", "1", "--out", str(out))
        + ["--cache-dir", str(tmp_path / "cache")]
    )
    try:
        log = process.communicate(timeout=300)[0]  # rank 0 waits for rank 1 in DDP's constructor: no hang
    finally:
        process.kill()
    assert process.returncode != 0, log
    assert "injected failure on rank 1" in log
    assert "rank 1 of 2 failed" in log


def test_a_castream_checkpoint_as_weights_keeps_its_backbone_and_starts_a_new_stream(
    tiny_run: Path, tmp_path: Path
) -> None:
    from training.pipeline import FitOptions, fit

    source = checkpoint.load(tiny_run / "castream.pt")
    out = tmp_path / "paper"
    options = FitOptions(
        weights=str(tiny_run / "castream.pt"),
        recipe="paper",
        image_size=64,
        synthetic_train=256,
        synthetic_val=64,
        epochs=0,
        out=str(out),
        progress=False,
    )
    fit(options)
    record = checkpoint.load(out / "castream.pt")
    assert [stage for stage, _ in record.config["plan"]] == ["stream"]  # the classifier fits: no baseline
    for key, value in source.state_dict.items():
        if key.startswith("backbone."):
            assert torch.equal(record.state_dict[key], value), key
    last = record.state_dict["stream.blocks.4.proj.weight"]
    assert not torch.equal(last, source.state_dict["stream.blocks.4.proj.weight"])
    assert not torch.equal(last, torch.eye(len(last)))  # the paper's Xavier start, not the default's identity
