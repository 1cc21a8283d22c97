"""The parts of ``BENCHMARKS.md`` and how each is made: every benchmark module declares its own ``SECTIONS``.

A :class:`Section` holds all there is to one figure of the report: its budgets (full and quick), the call
that measures it (a function returning a JSON-serialisable record), how the record reads in the report, and
the aims it is held to. Its command line, ``python -m benchmarks NAME``, is made from its budget
(``benchmarks.__main__``); ``benchmarks.report`` runs the sections in order and ``benchmarks.render`` joins
them. A *recorded* section is a study too long for ``make bench``: its own command measures it and stores
its record in ``benchmarks/results.json``, and every report renders it from there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Context:
    """What a section runs on: the served model, the int8 export (may be absent) and the section's budget."""

    model: Path
    int8_model: Path | None
    budget: Mapping[str, Any]


def missing_model(path: Path | None, flag: str = "--model") -> str | None:
    """Why a benchmark cannot read the model file at ``path`` (and how to make it), or None when it can."""
    if path is not None and path.is_file():
        return None
    make = "make models/castream-int8.onnx" if "int8" in flag else "make export"
    return f"{flag} {str(path)!r} does not exist; build it with `{make}`"


@dataclass(frozen=True)
class Aim:
    figure: str
    measured: float | None  # None: not measured in this run
    target: float
    higher_is_better: bool
    unit: str = ""

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


def _no_aims(result: Any) -> list[Aim]:
    return []


def _never_skipped(context: Context) -> str | None:
    return None


def _command_line(section: Section, context: Context) -> str:
    """``python -m benchmarks NAME`` with the files it reads and its budget as flags."""
    words = ["python -m benchmarks", section.name]
    words += [f"--model {context.model}"] if "model" in section.reads else []
    words += [f"--int8-model {context.int8_model}"] if "int8_model" in section.reads else []
    for key, value in context.budget.items():
        if value == "":  # an optional file left out
            continue
        shown = (
            " ".join(map(str, value))
            if isinstance(value, list | tuple)
            else f"{value:g}"
            if isinstance(value, float)
            else value
        )
        words.append(f"--{key.replace('_', '-')} {shown}")
    return " ".join(words)


@dataclass(frozen=True)
class Section:
    """One section of the report.

    Attributes:
        name: the key of its result in ``results["sections"]`` and its name for ``--sections``.
        title: its heading.
        full, quick: its budget in a full run and in a ``--quick`` one.
        run: measures it; returns a JSON-serialisable record.
        render: the lines of its body, from its result and all results (for figures it sets beside others').
        aims: the figures it is held to, from its result (None when it has none in this run).
        skip: why it cannot run in a context (the report says so), or None.
        reads: the model files it measures (``model``, ``int8_model``); none for those that build their own.
        recorded: measured by its own command only, and rendered from its stored record.
        command: its command line for a context, where not ``python -m benchmarks NAME`` with its budget.
    """

    name: str
    title: str
    full: Mapping[str, Any]
    quick: Mapping[str, Any]
    run: Callable[[Context], Any]
    render: Callable[[Any, dict[str, Any]], list[str]]
    aims: Callable[[Any], list[Aim]] = field(default=_no_aims)
    skip: Callable[[Context], str | None] = field(default=_never_skipped)
    reads: tuple[str, ...] = ("model",)
    recorded: bool = False
    command: Callable[[Context], str] | None = None

    def command_line(self, context: Context) -> str:
        return self.command(context) if self.command else _command_line(self, context)


def dig(value: Any, *keys: Any) -> Any:
    """``value[k1][k2]...``, or None where a key is missing or a level is None."""
    for key in keys:
        if value is None:
            return None
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def result_of(results: dict[str, Any], section: str, *keys: Any) -> Any:
    """A value inside a section's result, or None when the section did not run or lacks it."""
    return dig(results["sections"].get(section, {}).get("result"), *keys)


def fmt(value: Any, digits: int = 1, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}{suffix}"


def pct(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value * 100:.1f} %"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]
