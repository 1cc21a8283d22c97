"""``python -m benchmarks.report``: sections chosen, failures reported and in the exit status, files written."""

from __future__ import annotations

import json

import pytest

from benchmarks.report import Options, cpu_seconds, main, others_share, run


def test_others_share_is_the_machine_cpu_this_run_did_not_use() -> None:
    # The machine was busy 30 core-seconds over 10 s on 2 cores; this run used 20 of them.
    assert others_share((100.0, 5.0), (130.0, 25.0), wall_s=10, cores=2) == pytest.approx(0.5)
    assert others_share((100.0, 5.0), (110.0, 25.0), wall_s=10, cores=2) == 0  # clock granularity: never negative
    assert others_share((100.0, 5.0), (100.01, 5.0), wall_s=0.002, cores=2) is None  # too short to tell
    start = cpu_seconds()
    sum(i * i for i in range(200_000))
    end = cpu_seconds()
    assert end[1] > start[1] and end[0] >= start[0]


def _argv(model, int8_model, sections: str, tmp_path, plot: str = "img/plot.png") -> list[str]:
    """A quick report of ``sections`` into files of ``tmp_path``."""
    files = [
        "--out",
        str(tmp_path / "BENCHMARKS.md"),
        "--plot",
        str(tmp_path / plot),
        "--json",
        str(tmp_path / "r.json"),
    ]
    return ["--quick", "--model", str(model), "--int8-model", str(int8_model), "--sections", sections, *files]


def test_report_writes_markdown_plot_and_json(tiny_model, tiny_int8_model, tmp_path) -> None:
    out, plot, raw = tmp_path / "BENCHMARKS.md", tmp_path / "img" / "plot.png", tmp_path / "r.json"
    sections = "batch,image_size,int8,gpu"
    assert main(_argv(tiny_model, tiny_int8_model, sections, tmp_path)) == 0
    text = out.read_text()
    assert "![throughput against batch size](img/plot.png)" in text and plot.read_bytes().startswith(b"\x89PNG")
    assert "| 12 | 4000 x 3000 |" in text and "top-1 99.5 %" in text
    assert "--sections batch,image_size,int8,gpu" in text  # the command that produced the file
    results = json.loads(raw.read_text())
    assert list(results["sections"]) == sections.split(",")
    assert results["machine"]["usable_cores"] >= 1 and len(results["load_average"]["start"]) == 3
    # Another process's share is told wherever an interval lasted a second (the kernel counts in 10 ms ticks).
    timed = [(results["others_share"], results["wall_s"])]
    timed += [(section["others_share"], section["seconds"]) for section in results["sections"].values()]
    assert all((share is None) == (seconds < 1.0) for share, seconds in timed)
    assert all(0 <= share <= 1 for share, _ in timed if share is not None)
    assert timed[0][0] is not None  # the whole run lasts longer than that
    assert "Not run" in text  # the sections left out say so


def test_a_failed_section_is_reported_and_fails_the_command(tiny_model, tmp_path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    assert main(_argv(tiny_model, tiny_model, "int8", tmp_path)) == 1
    assert "**Failed:** ValueError:" in out.read_text() and "is a fp32 model" in out.read_text()


def test_missing_int8_model_is_a_skip_not_a_failure(tiny_model, tmp_path) -> None:
    results = run(Options(tiny_model, tmp_path / "absent.onnx", ("int8",), quick=True))
    assert (
        results["sections"]["int8"]["skipped"].startswith("--int8-model")
        and "does not exist" in results["sections"]["int8"]["skipped"]
    )


def test_unknown_sections_are_refused(tiny_model) -> None:
    with pytest.raises(SystemExit):
        main(["--model", str(tiny_model), "--sections", "load,speed"])


@pytest.mark.slow
def test_quick_report_of_the_service_sections(tiny_model, tmp_path) -> None:
    assert main(_argv(tiny_model, tiny_model, "load,stages,overlay_png,service_batch", tmp_path)) == 0
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "recovered" in text and "`attention=overlay`" in text and "after (level 1)" in text
    assert "**Failed" not in text
