"""The parts of ``BENCHMARKS.md`` and how each is made: every benchmark module declares its own ``SECTIONS``.

A :class:`Section` holds all there is to one figure of the report: its budgets (full and quick), the
command that measures it on its own, the call that measures it inside ``make bench``, how its result reads
in the report, and the aims it is held to. ``benchmarks.report`` only runs them in order and joins them.
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


@dataclass(frozen=True)
class Section:
    """One section of the report.

    Attributes:
        name: the key of its result in ``results["sections"]`` and its name for ``--sections``.
        title: its heading.
        full, quick: its budget in a full run and in a ``--quick`` one.
        command: the command line that measures it on its own, for a context.
        run: measures it; returns a JSON-serialisable result.
        render: the lines of its body, from its result and all results (for figures it sets beside others').
        aims: the figures it is held to, from its result (None when it has none in this run).
        skip: why it cannot run in a context (the report says so), or None.
    """

    name: str
    title: str
    full: Mapping[str, Any]
    quick: Mapping[str, Any]
    command: Callable[[Context], str]
    run: Callable[[Context], Any]
    render: Callable[[Any, dict[str, Any]], list[str]]
    aims: Callable[[Any], list[Aim]] = field(default=_no_aims)
    skip: Callable[[Context], str | None] = field(default=_never_skipped)


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
