"""The recorded studies: measured by ``python -m benchmarks NAME``, stored in the results file, rendered from it."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.__main__ import main
from export.parity import run as parity


def test_a_study_is_measured_by_its_command_and_joins_the_results_file(tmp_path: Path, capsys) -> None:
    raw = tmp_path / "results.json"
    raw.write_text(json.dumps({"sections": {"gpu": {"command": "kept", "skipped": "as it was"}}}))
    assert main(["train_default", "--run", "checkpoints/default", "--json", str(raw)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("## Training the default model") and "| stream | 3 epochs," in text
    stored = json.loads(raw.read_text())["sections"]
    assert stored["gpu"] == {"command": "kept", "skipped": "as it was"}  # the other records stay
    record = stored["train_default"]
    assert record["command"] == "python -m benchmarks train_default --run checkpoints/default"
    assert "cores), load average" in record["measured_on"]
    recorded = json.loads(Path("checkpoints/default/metrics.json").read_text())
    assert record["result"]["val_top1"] == {"gap": recorded["val_top1_gap"], "ca": recorded["val_top1_ca"]}
    assert sum(p["epochs"] for p in record["result"]["phases"]) == sum(
        len(stage["history"]) for stage in recorded["stages"].values()
    )


def test_parity_reports_the_largest_rounding_against_the_tolerance(tiny_checkpoint: Path, tmp_path: Path) -> None:
    report = parity(str(tiny_checkpoint), images=8, batch_sizes=[1, 8], cache=tmp_path)
    assert [row["batch_size"] for row in report["rows"]] == [1, 8] and report["images"] == 8
    for name, worst in report["worst"].items():
        assert worst == max(row[name] for row in report["rows"])
        assert report["margin"][name] == report["tolerance"][name] / worst
