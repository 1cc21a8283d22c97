"""What one part of ``BENCHMARKS.md`` is, and the small helpers its renderers use.

Each benchmark module declares its ``SECTIONS``. A :class:`Section` names the function that measures it; that
function's keyword defaults are the full budget and its command line (``python -m benchmarks NAME``), and the
section's ``quick`` budget overrides some of them for a check of the code rather than of the figures.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILES = ("model", "int8_model")  # the measuring functions' parameters that name the model files they read


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
    """One section of the report: ``name`` (its key in the results and its command, ``python -m benchmarks NAME``),
    ``title`` (its heading), ``measure`` (returns its JSON-serialisable record; takes the model files it reads,
    ``model`` and ``int8_model``, and its budget as keywords, whose defaults are the full budget), ``quick`` (the
    budget of a ``--quick`` run; its keys are the budget its command line shows), ``render`` (its body's lines from
    its record and all results) and ``aims`` (the figures it is held to, from its record or None)."""

    name: str
    title: str
    measure: Callable[..., Any]
    quick: Mapping[str, Any]
    render: Callable[[Any, dict[str, Any]], list[str]]
    aims: Callable[[Any], list[Aim]] = lambda result: []

    @property
    def options(self) -> dict[str, Any]:
        """Every keyword of ``measure`` with a default, but the model files: its flags and full budget."""
        parameters = inspect.signature(self.measure).parameters.values()
        return {p.name: p.default for p in parameters if p.default is not p.empty and p.name not in FILES}

    @property
    def reads(self) -> tuple[str, ...]:
        return tuple(name for name in FILES if name in inspect.signature(self.measure).parameters)

    def budget(self, quick: bool) -> dict[str, Any]:
        return dict(self.quick) if quick else {key: self.options[key] for key in self.quick}

    def command_line(self, files: Mapping[str, Path | None], budget: Mapping[str, Any]) -> str:
        """``python -m benchmarks NAME`` with the files it reads and its budget as flags."""
        words = ["python -m benchmarks", self.name, *(f"--{k.replace('_', '-')} {files[k]}" for k in self.reads)]
        return " ".join(words + [f"--{key.replace('_', '-')} {_shown(value)}" for key, value in budget.items()])


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


def counts(statuses: Mapping[str, int]) -> str:
    """``{"200": 5, "503": 1}`` as ``200: 5, 503: 1``."""
    return ", ".join(f"{status}: {count:,}" for status, count in statuses.items())


def body(*parts: str | list[str]) -> list[str]:
    """A section's lines: each part, a paragraph or a table's lines, followed by a blank line (empty ones left out)."""
    return [line for part in parts if part for line in ([part] if isinstance(part, str) else part) + [""]]


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]
