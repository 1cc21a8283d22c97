"""One section of ``BENCHMARKS.md``, measured on its own: ``python -m benchmarks NAME [flags]``.

Each section's flags are its budget (``--quick`` takes its quick one), plus the model files it reads. The section
prints as it reads in the report; a recorded study also stores its record in ``--json``, where every later
``make bench`` renders it from.

python -m benchmarks --help                              # the sections
python -m benchmarks stages --requests 50 --seconds 10   # one section, its budget changed
python -m benchmarks ablation                            # a recorded study (minutes), kept in benchmarks/results.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from benchmarks import render
from benchmarks.report import SECTIONS, Options, run
from benchmarks.sections import Section, missing_model
from training.logs import quiet_third_party, setup_logging

RESULTS = Path("benchmarks/results.json")


def _add_budget(parser: argparse.ArgumentParser, section: Section) -> None:
    for key, default in section.full.items():
        several = isinstance(default, list | tuple)
        value_type = type(default[0]) if several else type(default)
        parser.add_argument(
            f"--{key.replace('_', '-')}",
            dest=key,
            type=value_type,
            nargs="+" if several else None,
            default=None,
            help=f"default {' '.join(map(str, default)) if several else default} (--quick: {section.quick[key]})",
        )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    names = top.add_subparsers(dest="section", required=True, metavar="NAME")
    for section in SECTIONS:
        sub = names.add_parser(section.name, help=section.title + (" (recorded)" if section.recorded else ""))
        if "model" in section.reads:
            sub.add_argument("--model", type=Path, default=Path("models/castream.onnx"), help="the served model")
        if "int8_model" in section.reads:
            sub.add_argument("--int8-model", type=Path, default=Path("models/castream-int8.onnx"))
        _add_budget(sub, section)
        sub.add_argument("--quick", action="store_true", help="the quick budget: checks the code, not the figures")
        sub.add_argument("--json", type=Path, default=RESULTS if section.recorded else None, help="record file")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    section = next(s for s in SECTIONS if s.name == args.section)
    model, int8_model = getattr(args, "model", None), getattr(args, "int8_model", None)
    if model is not None and missing_model(model):
        parser().error(missing_model(model))
    setup_logging()
    quiet_third_party()
    budget = {**(section.quick if args.quick else section.full)}
    budget |= {key: getattr(args, key) for key in section.full if getattr(args, key) is not None}
    words = ["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)]
    options = Options(
        model or Path(), int8_model, (section.name,), args.quick, shlex.join(words), {section.name: budget}
    )
    results = run(options)
    entry = results["sections"][section.name]
    if args.json is not None:  # the record joins the others in the results file; the report renders it from there
        stored = json.loads(args.json.read_text()) if args.json.is_file() else {**results, "sections": {}}
        stored["sections"][section.name] = {**entry, "measured_on": render.measured_on(results)}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(stored, indent=2, default=float) + "\n")
    print(render.section(results, section))
    return 1 if "error" in entry else 0


if __name__ == "__main__":
    sys.exit(main())
