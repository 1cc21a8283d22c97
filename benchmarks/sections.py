"""What one part of ``BENCHMARKS.md`` is, and the small helpers its renderer uses.

Each benchmark module declares its ``SECTIONS``: a :class:`Section` holds its budgets (full and quick), the
call that measures it (a function returning a JSON-serialisable record), how the record reads in the report,
and the aims it is held to. ``benchmarks.report`` runs them and renders the document; ``benchmarks.__main__``
makes one command line per section from its budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
        value = "n/a" if self.met is None else f"{self.measured:.3g}{self.unit}"
        sign = ">=" if self.higher_is_better else "<="
        return f"| {self.figure} | {value} | {sign} {self.target:g}{self.unit} | {verdict} |"


@dataclass(frozen=True)
class Section:
    """One section of the report.

    Attributes:
        name: its key in ``results["sections"]`` and its command, ``python -m benchmarks NAME``.
        title: its heading.
        full, quick: its budget in a full run and in a ``--quick`` one; each key is a flag of its command.
        run: measures it; returns a JSON-serialisable record.
        render: the lines of its body, from its record and all results (for figures set beside others').
        aims: the figures it is held to, from its record (None when it did not run).
        reads: the model files it measures (``model``, ``int8_model``); none for those that build their own.
    """

    name: str
    title: str
    full: Mapping[str, Any]
    quick: Mapping[str, Any]
    run: Callable[[Context], Any]
    render: Callable[[Any, dict[str, Any]], list[str]]
    aims: Callable[[Any], list[Aim]] = lambda result: []
    reads: tuple[str, ...] = ("model",)

    def command_line(self, context: Context) -> str:
        """``python -m benchmarks NAME`` with the files it reads and its budget as flags."""
        words = ["python -m benchmarks", self.name]
        words += [f"--model {context.model}"] if "model" in self.reads else []
        words += [f"--int8-model {context.int8_model}"] if "int8_model" in self.reads else []
        for key, value in context.budget.items():
            if value != "":  # an optional file left out
                words.append(f"--{key.replace('_', '-')} {_shown(value)}")
        return " ".join(words)


def _shown(value: Any) -> str:
    if isinstance(value, list | tuple):
        return " ".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def dig(value: Any, *keys: Any) -> Any:
    """``value[k1][k2]...``, or None where a key is missing or a level is None."""
    for key in keys:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def result_of(results: dict[str, Any], section: str, *keys: Any) -> Any:
    """A value inside a section's record, or None when the section did not run or lacks it."""
    return dig(results["sections"].get(section, {}).get("result"), *keys)


def fmt(value: Any, digits: int = 1, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}{suffix}"


def pct(value: float | None) -> str:
    return fmt(None if value is None else value * 100, 1, " %")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]
