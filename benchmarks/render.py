"""``BENCHMARKS.md`` and its plot from the results of one ``benchmarks.report`` run (pure functions of the dict)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.agreement import Thresholds

PLOT_NAME = "throughput_vs_batch.png"


@dataclass(frozen=True)
class Aim:
    figure: str
    measured: float | None  # None: not measured in this run
    target: float
    higher_is_better: bool
    unit: str = ""
    section: str = ""

    @property
    def met(self) -> bool | None:
        if self.measured is None or math.isnan(self.measured):
            return None
        return self.measured >= self.target if self.higher_is_better else self.measured <= self.target

    def row(self) -> str:
        verdict = {True: "yes", False: "**no**", None: "not measured"}[self.met]
        sign = ">=" if self.higher_is_better else "<="
        value = "n/a" if self.met is None else f"{self.measured:.3g}{self.unit}"
        return f"| {self.figure} | {value} | {sign} {self.target:g}{self.unit} | {verdict} |"


def _get(results: dict[str, Any], section: str, *keys: Any) -> Any:
    """A value inside a section's result, or None when the section did not run or lacks it."""
    value: Any = results["sections"].get(section, {}).get("result")
    for key in keys:
        if value is None:
            return None
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def aims(results: dict[str, Any]) -> list[Aim]:
    """Every figure the project sets an aim for, with this run's value."""
    limits = Thresholds()
    concurrency = _get(results, "load", "config", "concurrency") or 8
    return [
        Aim(
            f"service / raw ONNX Runtime throughput, concurrency {concurrency}",
            _get(results, "load", "ratio_run_only"),
            0.85,
            True,
            section="load",
        ),
        Aim(
            "service p50 at concurrency 1 minus the model's own batch-1 p50",
            _get(results, "load", "overhead_c1_p50_ms"),
            15,
            False,
            " ms",
            "load",
        ),
        Aim(
            "CA / GAP latency, ResNet-50 at 224, batch 1",
            _get(results, "onnx_speed", "ca_over_gap_latency"),
            1.03,
            False,
        ),
        Aim(
            "int8 / fp32 throughput, ResNet-50 at 224",
            _get(results, "onnx_speed", "int8_over_fp32_throughput"),
            2.0,
            True,
        ),
        Aim(
            "int8 top-1 agreement with fp32 (served model)",
            _get(results, "precision", "agreement", "top1"),
            limits.top1,
            True,
        ),
        Aim(
            "int8 attention-peak agreement (served model)",
            _get(results, "precision", "agreement", "peak"),
            limits.peak,
            True,
        ),
        Aim(
            "int8 attention correlation (served model)",
            _get(results, "precision", "agreement", "correlation"),
            limits.correlation,
            True,
        ),
        Aim("stream training / frozen forward throughput", _get(results, "train_speed", "ratio"), 0.8, True),
        Aim(
            "insertion + deletion, batched / one step at a time",
            _get(results, "insertion_deletion", "speedup"),
            5.0,
            True,
            "x",
        ),
        Aim("`make bench` wall time (models already built)", results.get("wall_s", math.nan) / 60, 15, False, " min"),
    ]


def _f(value: Any, digits: int = 1, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}{suffix}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value * 100:.1f} %"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _command(section: dict[str, Any]) -> list[str]:
    share, seconds = section.get("others_share"), section.get("seconds", 0)
    known = share is not None and seconds >= 1 and not math.isnan(share)  # shorter is below the kernel's accounting
    others = f"; other processes used {share:.0%} of the CPU meanwhile" if known else ""
    return [f"Command: `{section['command']}` ({seconds:.0f} s in this run{others}).", ""]


def _section(results: dict[str, Any], name: str, title: str) -> tuple[list[str], Any]:
    """The heading and command lines of a section, and its result (None when it did not produce one)."""
    section = results["sections"].get(name)
    lines = [f"## {title}", ""]
    if section is None:
        return [*lines, "Not run (left out of this run's `--sections`).", ""], None
    if "error" in section:
        return [*lines, *_command(section), f"**Failed:** {section['error']}", ""], None
    if "skipped" in section:
        return [*lines, f"Not measured: {section['skipped']}", ""], None
    return [*lines, *_command(section)], section["result"]


def _machine(results: dict[str, Any]) -> list[str]:
    m, load = results["machine"], results["load_average"]
    model = results["model"]
    rows = [
        ["CPU", f"{m['cpu']} ({m['usable_cores']} usable of {m['logical_cores']} logical cores)"],
        ["memory", f"{m['memory_gib']:.0f} GiB"],
        ["system", m["platform"]],
        ["software", ", ".join(f"{k} {v}" for k, v in m["versions"].items())],
        ["GPU", m["gpu"]],
        [
            "load average (1 min, this run's own processes included)",
            f"{load['start'][0]:.2f} at the start, at most {max(load.get('section_starts', [0])):.2f} as a section "
            f"started, {load['end'][0]:.2f} at the end",
        ],
        ["CPU used by other processes", f"{_pct(results.get('others_share'))} of the machine during the run"],
        ["source", f"git {m['git']}"],
        [
            "served model",
            f"`{model['path']}`: {model['name']} ({model['backbone']}, {model['pooling']}, {model['precision']}, "
            f"{model['crop']} px crop, {model['classes']} classes)",
        ],
    ]
    return ["## Machine", "", *_table(["", ""], rows), ""]


def _load(results: dict[str, Any]) -> list[str]:
    lines, r = _section(results, "load", "Service against raw ONNX Runtime")
    if r is None:
        return lines
    raw, c = r["raw"], r["config"]["concurrency"]
    lines += [
        f"Same model, same {r['config']['images']} JPEGs, batch size {r['config']['batch_size']}; the service gets one "
        "image per request from closed-loop clients on loopback. Raw ONNX Runtime is measured before and after the "
        "service phases and averaged.",
        "",
    ]
    rows = [
        ["raw `session.run`, batch 1", "n/a", _f(raw["batch1_p50_ms"]), _f(raw["batch1_p99_ms"])],
        [f"raw `session.run`, batch {r['config']['batch_size']}", _f(raw["run_only"]), "", ""],
        ["raw decode + preprocess + run", _f(raw["with_preprocessing"]), "", ""],
    ]
    for concurrency in (1, c):
        phase = r[f"service_c{concurrency}"]
        rows.append(
            [f"service, concurrency {concurrency}", _f(phase["throughput"]), _f(phase["p50_ms"]), _f(phase["p99_ms"])]
        )
    lines += _table(["", "images/s", "p50 ms", "p99 ms"], rows)
    burst, recovery = r["overload"], r["recovery"]
    lines += [
        "",
        f"- Throughput ratio service / raw at concurrency {c}: **{r['ratio_run_only']:.2f}** against `session.run` "
        f"alone, {r['ratio_with_preprocessing']:.2f} against decode + preprocess + run.",
        f"- Latency at concurrency 1: service p50 is **{r['overhead_c1_p50_ms']:+.1f} ms** over the model's own "
        "batch-1 p50 (HTTP, decoding, the batching delay and the response).",
        f"- Overload ({r['config']['overload_concurrency']} clients, queue of {r['config']['overload_queue']} images): "
        f"answers {burst['statuses']}; 503 in p50 {_f(burst['rejected_p50_ms'])} ms / p99 "
        f"{_f(burst['rejected_p99_ms'])} ms with `Retry-After: {burst['retry_after']}`. Afterwards "
        f"{recovery['statuses']} at p50 {_f(recovery['p50_ms'])} ms and `/readyz` {recovery['readyz']}: "
        f"{'recovered' if r['recovered'] else '**did not recover**'}.",
        "",
    ]
    return lines


STAGE_NOTES = {
    "decode": "bytes to RGB pixels (`castream_decode_duration_seconds`)",
    "preprocess": "resize, crop, normalise (`castream_preprocess_duration_seconds`)",
    "queue wait": "until its batch runs, incl. the batching delay (`castream_queue_wait_seconds`)",
    "inference": "`session.run` of its one-image batch (`castream_inference_duration_seconds`)",
    "encode": "labels, grid, PNG, JSON (`castream_encode_duration_seconds`)",
    "rest": "body reading and parsing, thread hand-offs, framework (request minus the above)",
    "request": "`castream_request_duration_seconds`",
}


def _stages(results: dict[str, Any]) -> list[str]:
    lines, r = _section(results, "stages", "Where the time goes in one request")
    if r is None:
        return lines
    single = r["single"]
    modes = list(single)
    lines += [
        "One client, one image per request (so every batch holds one image), mean milliseconds per request from the "
        "service's own histograms (`_sum` / `_count` before and after each phase), by `attention` option.",
        "",
    ]
    rows = []
    for stage, note in STAGE_NOTES.items():
        cells = []
        for mode in modes:
            stages = single[mode]["stages_ms"]
            share = stages[stage] / stages["request"] * 100 if stage != "request" and stages["request"] else None
            cells.append(_f(stages[stage], 2) + (f" ({share:.0f} %)" if share is not None else ""))
        rows.append([f"{stage}: {note}", *cells])
    client = [f"{_f(single[m]['client_p50_ms'])} / {_f(single[m]['client_p99_ms'])}" for m in modes]
    rows.append(["client p50 / p99 (adds HTTP on loopback)", *client])
    lines += _table(["stage (ms per request)", *(f"`attention={m}`" for m in modes)], rows)
    return [*lines, "", *_loaded(results, r["loaded"])]


def _loaded(results: dict[str, Any], loaded: dict[str, Any]) -> list[str]:
    """The same stages under load, and how the batches went, against raw ``session.run`` at that batch size."""
    stages, c = loaded["stages_ms"], loaded["concurrency"]
    per_image = ", ".join(f"{stage} {stages[stage]:.2f} ms" for stage in ("decode", "preprocess", "encode"))
    raw = {p["batch_size"]: p for p in _get(results, "batch") or []}
    size = round(loaded["mean_batch"])
    alone = f" (alone, a batch of {size} takes {raw[size]['p50_ms']:.1f} ms: see below)" if size in raw else ""
    return [
        f"Under load, {c} clients with `attention=grid`: {_f(loaded['images_per_second'])} images/s, batches of "
        f"{loaded['mean_batch']:.1f} images on average; one `session.run` took {loaded['run_ms']:.1f} ms{alone} and "
        f"one was running {loaded['busy'] * 100:.0f} % of the time. Our own work per image: {per_image}, besides "
        f"HTTP and parsing; queue wait {stages['queue wait']:.2f} ms. On {results['machine']['usable_cores']} cores "
        "this work competes with ONNX Runtime's threads for the CPU, and between batches the next one is still being "
        "read and decoded.",
        "",
    ]


OURS = ("decode", "preprocess", "encode", "rest")  # stages that are our code, not ONNX Runtime or a set delay


def _slowest_ours(results: dict[str, Any], before_encode_ms: float) -> list[str]:
    """A sentence naming the largest stage of our own code in an overlay request, with the old PNG level."""
    overlay = _get(results, "stages", "single", "overlay", "stages_ms")
    if overlay is None:
        return []
    costs = {stage: overlay[stage] for stage in OURS} | {"encode": before_encode_ms}
    slowest = max(costs, key=costs.__getitem__)
    others = ", ".join(f"{stage} {costs[stage]:.1f} ms" for stage in OURS if stage != slowest)
    return [
        f"With the old PNG level, the largest stage of our own code in an `attention=overlay` request was "
        f"**{slowest}** ({costs[slowest]:.1f} ms; {others}). Inference belongs to ONNX Runtime, and the queue wait at "
        "concurrency 1 is the batching delay (`CASTREAM_MAX_BATCH_DELAY_MS`), a setting rather than work.",
        "",
    ]


def _overlay(results: dict[str, Any]) -> list[str]:
    lines, r = _section(results, "overlay_png", "Made faster: the overlay PNG, before and after")
    if r is None:
        return lines
    before, after, c = r["before"], r["after"], r["concurrency"]
    lines += [
        *_slowest_ours(results, before["encode_ms"]),
        f"The overlay PNG was written at zlib level {before['png_level']} (Pillow's default); the service now writes "
        f"level {after['png_level']} (`CASTREAM_OVERLAY_PNG_LEVEL`): the same pixels, a somewhat larger file. Both "
        f"settings ran in this run with `attention=overlay`, in ABBA order ({r['rounds']} round(s), averaged).",
        "",
    ]
    keys = [
        ("encode ms per request (server)", "encode_ms", 2),
        ("request ms (server)", "request_ms", 1),
        ("client p50 ms, concurrency 1", "c1_p50_ms", 1),
        ("client p99 ms, concurrency 1", "c1_p99_ms", 1),
        (f"images/s, concurrency {c}", f"c{c}_images_per_second", 1),
        (f"client p50 ms, concurrency {c}", f"c{c}_p50_ms", 1),
        ("PNG bytes", "png_bytes", 0),
    ]
    rows = [
        [label, _f(before[key], digits), _f(after[key], digits), _f(after[key] / before[key], 2) + "x"]
        for label, key, digits in keys
        if before.get(key)
    ]
    header = ["", f"before (level {before['png_level']})", f"after (level {after['png_level']})", "after / before"]
    return [*lines, *_table(header, rows), ""]


def _batches(results: dict[str, Any], plot: str | None) -> list[str]:
    lines, raw = _section(results, "batch", "Cost against batch size")
    if raw is None:
        return lines
    service = {p["batch_size"]: p for p in _get(results, "service_batch") or []}
    lines += [
        "Raw: `session.run` on b preprocessed images, sizes interleaved round by round (p99 over the rounds). "
        "Service: `CASTREAM_MAX_BATCH_SIZE` = b under 2b closed-loop clients of one image each, so batches can fill.",
        "",
    ]
    rows = []
    for point in raw:
        s = service.get(point["batch_size"], {})
        rows.append(
            [
                str(point["batch_size"]),
                _f(point["images_per_second"]),
                _f(point["p50_ms"]),
                _f(point["p99_ms"]),
                _f(s.get("images_per_second")),
                f"{_f(s.get('p50_ms'))} / {_f(s.get('p99_ms'))}",
            ]
        )
    header = ["batch", "raw images/s", "raw p50 ms", "raw p99 ms", "service images/s", "service p50 / p99 ms"]
    lines += _table(header, rows)
    if plot:
        lines += ["", f"![throughput against batch size]({plot})"]
    return [*lines, ""]


def _image_sizes(results: dict[str, Any]) -> list[str]:
    lines, r = _section(results, "image_size", "Cost against image size")
    if r is None:
        return lines
    lines += [
        "Decoding (`service.imaging.decode`: bytes to RGB, EXIF orientation) and preprocessing (resize of the shorter "
        "side, crop, normalise, to the served model's input) of one 4:3 JPEG (quality 90) on one core, medians.",
        "",
    ]
    rows = [
        [
            f"{p['megapixels']:g}",
            f"{p['width']} x {p['height']}",
            f"{p['jpeg_bytes'] / 1e6:.2f}",
            _f(p["decode_ms"]),
            _f(p["preprocess_ms"]),
            _f(p["total_ms"]),
            _f(p["images_per_second_per_core"]),
        ]
        for p in r
    ]
    header = ["megapixels", "pixels", "MB", "decode ms", "preprocess ms", "total ms", "images/s per core"]
    return [*lines, *_table(header, rows), ""]


def _precision(results: dict[str, Any]) -> list[str]:
    lines, r = _section(results, "precision", "int8 against fp32 on the served model")
    if r is None:
        return lines
    agreement = r["agreement"]
    lines += [
        f"Agreement as measured by `python -m export.to_onnx --int8` on {agreement['images']} validation images "
        f"before it wrote the file: top-1 {_pct(agreement['top1'])}, attention peak {_pct(agreement['peak'])}, "
        f"mean attention correlation {_f(agreement['correlation'], 4)} (accuracy fp32 {_pct(r['accuracy']['fp32'])}, "
        f"int8 {_pct(r['accuracy']['int8'])}). Speed timed in this run, {r['threads']} thread(s):",
        "",
    ]
    rows = [
        [
            str(t["batch_size"]),
            _f(t["fp32_ms"], 2),
            _f(t["int8_ms"], 2),
            _f(t["fp32_images_per_second"]),
            _f(t["int8_images_per_second"]),
            f"**{t['int8_over_fp32']:.2f}x**",
        ]
        for t in r["timings"]
    ]
    header = ["batch", "fp32 ms", "int8 ms", "fp32 images/s", "int8 images/s", "int8 / fp32 throughput"]
    return [*lines, *_table(header, rows), ""]


def _onnx_speed(results: dict[str, Any]) -> list[str]:
    lines, r = _section(results, "onnx_speed", "CA against GAP, int8 against fp32 (ONNX Runtime)")
    if r is None:
        return lines
    lines += [
        f"{r['backbone']} at {r['image_size']} x {r['image_size']} with random weights (speed does not depend on "
        f"them), {r['threads']} thread(s); the graphs alternate round by round on the same inputs. Ratios are the "
        "median of per-round ratios.",
        "",
    ]
    timings = r["timings"]
    batches = list(timings)
    rows = []
    for graph in ("fp32-gap", "fp32-ca", "int8-ca"):
        cells = []
        for batch in batches:
            t = timings[batch].get(graph, {})
            cells += [_f(t.get("median_ms")), _f(t.get("images_per_s"))]
        rows.append([graph, *cells])
    batches = [batch.replace("batch", "batch ") for batch in batches]
    header = ["graph"]
    for batch in batches:
        header += [f"{batch}: ms", f"{batch}: images/s"]
    lines += _table(header, rows)
    lines += [
        "",
        f"- CA / GAP latency at batch 1: **{r['ca_over_gap_latency']:.3f}** (aim <= 1.03); CA / GAP time at "
        f"{batches[-1]}: {r['ca_over_gap_batch_throughput']:.3f}.",
        f"- int8 / fp32 throughput of the CA graph at {batches[-1]}: **{r['int8_over_fp32_throughput']:.2f}x** "
        f"(aim >= 2.0); at batch 1: {r['int8_over_fp32_latency']:.2f}x.",
        "",
    ]
    return lines


def _precision_name(r: dict[str, Any]) -> str:
    name = r.get("precision") or ("bf16" if r.get("amp") else "fp32")  # older results recorded a flag
    return "float32" if name == "fp32" else f"{name} autocast"


def _train(results: dict[str, Any]) -> list[str]:
    lines, r = _section(results, "train_speed", "Stream training against the frozen forward pass")
    if r is None:
        return lines
    lines += [
        f"{r['backbone']} at {r['image_size']} px, batch {r['batch_size']}, {r['threads']} threads, "
        f"{_precision_name(r)} (the training default here), {r['rounds']} alternating rounds.",
        "",
        *_table(
            ["", "ms per batch", "images/s"],
            [
                ["frozen model, forward only (`no_grad`)", _f(r["forward_ms"]), _f(r["forward_images_per_second"], 2)],
                [
                    "stream training step (forward, backward, SGD)",
                    _f(r["train_step_ms"]),
                    _f(r["train_images_per_second"], 2),
                ],
            ],
        ),
        "",
        f"Training throughput / forward throughput: **{r['ratio']:.2f}** (aim >= {r['aim']}).",
        "",
    ]
    return lines


def _insertion_deletion(results: dict[str, Any]) -> list[str]:
    lines, r = _section(results, "insertion_deletion", "Insertion and deletion: batched against one step at a time")
    if r is None:
        return lines
    lines += [
        f"{r['backbone']} at {r['size']} px, {r['steps']} steps of {r['pixels_per_step']} pixels, "
        f"{r['threads']} threads; batched: {r['images']} images, {r['batch_size']} perturbed images per pass; loop: "
        f"{r['naive_images']} image(s).",
        "",
        *_table(
            ["", "images/s", "speed-up"],
            [
                ["one image, one step per forward pass", _f(r["naive_images_per_second"], 3), "1.00x"],
                ["batched", _f(r["batched_images_per_second"], 3), f"{r['batching_speedup']:.2f}x"],
                ["batched, BatchNorm folded", _f(r["folded_images_per_second"], 3), f"**{r['speedup']:.2f}x**"],
            ],
        ),
        "",
        f"Curves equal: {'yes' if r['equal'] else '**no**'} (largest difference {r['max_abs_difference']:.1e}).",
        "",
    ]
    return lines


def _gpu(results: dict[str, Any]) -> list[str]:
    lines, r = _section(results, "gpu", "GPU")
    if r is None:
        return lines
    if not r.get("measured"):
        return [*lines, f"**Not measured**: {r['reason']}. No GPU figure is estimated.", ""]
    for name, points in r["sweeps"].items():
        lines += [f"{name}:", ""]
        rows = [[str(p["batch_size"]), _f(p["images_per_second"]), _f(p["p50_ms"]), _f(p["p99_ms"])] for p in points]
        lines += [*_table(["batch", "images/s", "p50 ms", "p99 ms"], rows), ""]
    lines += [f"- {note}" for note in r.get("notes", [])]
    return [*lines, ""]


def render(results: dict[str, Any], plot: str | None = PLOT_NAME) -> str:
    """The whole of ``BENCHMARKS.md``; ``plot`` is the image's path relative to it (None: no image)."""
    minutes, seconds = divmod(round(results.get("wall_s", 0)), 60)
    header = [
        "# Benchmarks",
        "",
        f"Generated by `{results['command']}` on {results['generated']} in {minutes} min {seconds:02d} s. Every figure "
        "below was measured in that one run, on the same model and inputs (except the int8 agreement, which the int8 "
        "export measured and recorded in the model file); each section names the command that measures it on its own. "
        "Ratios measured side by side are the result; absolute numbers describe this machine. Regenerate with "
        "`make bench`.",
        "",
    ]
    if results.get("quick"):
        header += ["**Quick run** (`--quick`): tiny budgets, for checking the report, not for reading figures.", ""]
    summary = ["## Aims", "", "| figure | this run | aim | met |", "|---|---|---|---|"]
    summary += [aim.row() for aim in aims(results)]
    parts = [
        header,
        _machine(results),
        [*summary, ""],
        _load(results),
        _stages(results),
        _overlay(results),
        _batches(results, plot),
        _image_sizes(results),
        _precision(results),
        _onnx_speed(results),
        _train(results),
        _insertion_deletion(results),
        _gpu(results),
    ]
    return "\n".join(line for part in parts for line in part).rstrip() + "\n"


def plot_batches(results: dict[str, Any], path: Path) -> bool:
    """Writes throughput against batch size (raw, service, GPU when measured) as PNG; False when nothing to plot."""
    series = {"raw ONNX Runtime (CPU)": _get(results, "batch"), "service (CPU)": _get(results, "service_batch")}
    for name, points in (_get(results, "gpu", "sweeps") or {}).items():
        series[name] = points
    series = {name: points for name, points in series.items() if points}
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for name, points in series.items():
        sizes = [p["batch_size"] for p in points]
        axes.plot(sizes, [p["images_per_second"] for p in points], marker="o", label=name)
    axes.set_xscale("log", base=2)
    axes.set_xticks(sorted({p["batch_size"] for points in series.values() for p in points}))
    axes.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes.set_xlabel("batch size (service: CASTREAM_MAX_BATCH_SIZE, 2x as many clients)")
    axes.set_ylabel("images / s")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend()
    axes.set_title(f"{results['model']['name']}, {results['machine']['usable_cores']} CPU cores")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return True
