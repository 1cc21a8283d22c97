"""One section of ``BENCHMARKS.md``, measured on its own: ``python -m benchmarks NAME [flags]``.

Each section's flags are its budget (``--quick`` takes its quick one), plus the model files it reads; it
prints the section as it reads in the report, and ``--json`` keeps the raw record.

python -m benchmarks --help                              # the sections
python -m benchmarks stages --requests 50 --seconds 10   # one section, its budget changed
python -m benchmarks soak --soak-s 60                    # the reliability phases, a one-minute soak
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from benchmarks.report import SECTIONS, Options, run, section_text
from benchmarks.sections import Section, missing_model
from training.logs import quiet_third_party, setup_logging


def _add_budget(parser: argparse.ArgumentParser, section: Section) -> None:
    for key, default in section.full.items():
        several = isinstance(default, list | tuple)
        shown = " ".join(map(str, default)) if several else default
        parser.add_argument(
            f"--{key.replace('_', '-')}",
            dest=key,
            type=type(default[0]) if several else type(default),
            nargs="+" if several else None,
            help=f"default {shown} (--quick: {section.quick[key]})",
        )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    names = top.add_subparsers(dest="section", required=True, metavar="NAME")
    for section in SECTIONS:
        sub = names.add_parser(section.name, help=section.title)
        if "model" in section.reads:
            sub.add_argument("--model", type=Path, default=Path("models/castream.onnx"), help="the served model")
        if "int8_model" in section.reads:
            sub.add_argument("--int8-model", type=Path, default=Path("models/castream-int8.onnx"))
        _add_budget(sub, section)
        sub.add_argument("--quick", action="store_true", help="the quick budget: checks the code, not the figures")
        sub.add_argument("--json", type=Path, help="also write the raw results here")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    section = next(s for s in SECTIONS if s.name == args.section)
    model, int8_model = getattr(args, "model", None), getattr(args, "int8_model", None)
    if model is not None and missing_model(model):
        parser().error(missing_model(model))
    setup_logging()
    quiet_third_party()
    budget = dict(section.quick if args.quick else section.full)
    budget |= {key: getattr(args, key) for key in section.full if getattr(args, key) is not None}
    words = shlex.join(["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)])
    results = run(Options(model or Path(), int8_model, (section.name,), args.quick, words, {section.name: budget}))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(section_text(results, section))
    return 1 if "error" in results["sections"][section.name] else 0


if __name__ == "__main__":
    sys.exit(main())
