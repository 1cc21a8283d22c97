"""A command's options declared once: dataclass fields that are also its command-line flags.

A field made with :func:`option` becomes ``--field-name`` (or the flags it names); its type, default, help,
choices and lower bound come from the field, so the dataclass and ``--help`` cannot drift apart. Fields made
with plain ``field()`` or a bare default stay out of the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any

_KEY = "option"


def option(
    default: Any = dataclasses.MISSING,
    help: str | None = None,
    *,
    choices: Sequence[str] | None = None,
    minimum: int | None = None,
    flags: Sequence[str] = (),
    metavar: str | None = None,
) -> Any:
    """A dataclass field that is also a flag.

    Args:
        default: the field's default, which is the flag's too.
        help: the flag's help text (argparse's ``%(default)s`` works).
        choices: the values the flag accepts.
        minimum: the smallest value the flag accepts (``None`` passes).
        flags: the flag's spellings, when not ``--field-name``.
        metavar: the value's name in ``--help``.
    """
    meta = {"help": help, "choices": choices, "minimum": minimum, "flags": tuple(flags), "metavar": metavar}
    return dataclasses.field(default=default, metadata={_KEY: meta})


def _value_type(hint: Any) -> tuple[type, bool]:
    """The type of one value of a field, and whether the field holds several."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) in (tuple, list):
        return typing.get_args(hint)[0], True
    return hint, False


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type) -> None:
    """Adds a flag to ``parser`` for each of ``cls``'s fields made with :func:`option`."""
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        meta = spec.metadata.get(_KEY)
        if meta is None:
            continue
        value_type, several = _value_type(hints[spec.name])
        kwargs: dict[str, Any] = {"dest": spec.name, "default": spec.default, "help": meta["help"]}
        if value_type is bool:
            negative = spec.default is True
            flags = meta["flags"] or ((f"--no-{spec.name.replace('_', '-')}",) if negative else (_flag(spec),))
            parser.add_argument(*flags, action="store_false" if negative else "store_true", **kwargs)
            continue
        kwargs.update(type=value_type, choices=meta["choices"], metavar=meta["metavar"])
        if several:
            kwargs.update(nargs="+", default=list(spec.default))
        parser.add_argument(_flag(spec), *meta["flags"][1:], **kwargs)


def _flag(spec: dataclasses.Field) -> str:
    return (spec.metadata[_KEY]["flags"] or ("--" + spec.name.replace("_", "-"),))[0]


def _check_minimums(parser: argparse.ArgumentParser, cls: type, args: argparse.Namespace) -> None:
    for spec in dataclasses.fields(cls):
        minimum = spec.metadata.get(_KEY, {}).get("minimum")
        value = getattr(args, spec.name, None)
        if minimum is not None and value is not None and value < minimum:
            bound = "positive" if minimum == 1 else f"{minimum} or more"
            parser.error(f"{_flag(spec)} must be {bound}, got {value}")


def from_args(parser: argparse.ArgumentParser, cls: type, args: argparse.Namespace, **changes: Any) -> Any:
    """The ``cls`` the parsed ``args`` describe, with ``changes``; a bad value ends the command as argparse does.

    Lower bounds are checked here, then the dataclass's own checks (a ``ValueError`` becomes the usage error).
    """
    _check_minimums(parser, cls, args)
    values = {spec.name: getattr(args, spec.name) for spec in dataclasses.fields(cls) if _KEY in spec.metadata}
    for name, value in values.items():
        if isinstance(value, list):  # nargs="+": the field holds a tuple, each value once
            values[name] = tuple(dict.fromkeys(value))
    try:
        return cls(**{**values, **changes})
    except ValueError as error:
        parser.error(str(error))


def command_parser(prog: str, description: str | None, cls: type) -> argparse.ArgumentParser:
    """A parser for ``python -m prog`` whose flags are ``cls``'s options; the description keeps its lines."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {prog}", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_options(parser, cls)
    return parser
