"""The log format every command of the project prints with (the service configures its own from its settings)."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int | str = logging.INFO) -> None:
    """Configures the root logger for a command: ``level`` and the project's format, on standard error."""
    logging.basicConfig(level=level, format=FORMAT)


# Exporters and ONNX Runtime log every graph rewrite at INFO, HTTP clients every request; commands show their
# warnings only.
THIRD_PARTY = (
    "onnxscript",
    "onnx_ir",
    "onnxruntime",
    "torch.onnx",
    "torch.export",
    "torch._dynamo",
    "httpx",
    "httpcore",
)


def quiet_third_party(names: tuple[str, ...] = THIRD_PARTY) -> None:
    """Raises the loggers of ``names`` to WARNING."""
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)
