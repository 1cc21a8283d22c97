"""Options declared once: a dataclass's fields become its command's flags."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from training.options import command_parser, from_args, option


@dataclass
class Example:
    size: int = option(3, "the size (default: %(default)s)", minimum=1)
    epochs: int = option(2, "epochs", minimum=0)
    rate: float | None = option(None, "a rate")
    kind: str = option("a", "a kind", choices=("a", "b"))
    names: tuple[str, ...] = option(("x", "y"), "names", choices=("x", "y", "z"))
    quick: bool = option(False, "be quick")
    progress: bool = option(True, "no progress bars")
    limit: float = option(1.0, "an upper limit", flags=("--max-limit",))
    hidden: int = 7
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rate is not None and self.rate <= 0:
            raise ValueError(f"rate must be positive, got {self.rate!r}")


def parse(argv: list[str]) -> Example:
    parser = command_parser("example", "An example.", Example)
    return from_args(parser, Example, parser.parse_args(argv))


def test_defaults_types_and_flags_come_from_the_fields() -> None:
    assert parse([]) == Example()
    parsed = parse(["--size", "5", "--rate", "0.5", "--kind", "b", "--names", "z", "x", "z", "--quick"])
    assert parsed == Example(size=5, rate=0.5, kind="b", names=("z", "x"), quick=True)
    assert parse(["--no-progress", "--max-limit", "2.5"]) == Example(progress=False, limit=2.5)


def test_help_lists_each_option_with_its_help_and_leaves_plain_fields_out() -> None:
    text = command_parser("example", "An example.", Example).format_help()
    for flag in ("--size", "--epochs", "--rate", "--kind", "--names", "--quick", "--no-progress", "--max-limit"):
        assert flag in text
    assert "the size (default: 3)" in text and "no progress bars" in text
    assert "--hidden" not in text and "--extra" not in text and "--limit " not in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--size", "0"], "--size must be positive, got 0"),
        (["--epochs", "-1"], "--epochs must be 0 or more, got -1"),
        (["--kind", "c"], "invalid choice"),
        (["--names", "w"], "invalid choice"),
        (["--size", "two"], "invalid int value"),
        (["--rate", "-1"], "rate must be positive, got -1.0"),
    ],
)
def test_bad_values_end_the_command_with_a_usage_error(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_epochs_of_zero_pass_where_zero_is_the_bound() -> None:
    assert parse(["--epochs", "0"]).epochs == 0
