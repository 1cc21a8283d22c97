"""The log format every command of the project prints with (the service configures its own from its settings)."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int | str = logging.INFO) -> None:
    """Configures the root logger for a command: ``level`` and the project's format, on standard error."""
    logging.basicConfig(level=level, format=FORMAT)
