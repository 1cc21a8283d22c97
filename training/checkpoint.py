"""Self-describing checkpoints: everything needed to rebuild the model without the command line.

A checkpoint is a plain dict of tensors and Python primitives, so it loads with ``weights_only=True``.
It is written atomically (:func:`training.files.atomic_write`): a crash at any moment leaves either the
previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from training.files import atomic_write

FORMAT = "castream-checkpoint"
FORMAT_VERSION = 1


def is_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def save(state: dict[str, Any], path: str | Path) -> Path:
    """Writes ``state`` atomically to ``path``."""
    path = Path(path)
    with atomic_write(path) as file:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, file)
    return path


def load(path: str | Path) -> dict[str, Any]:
    """Reads a castream checkpoint, refusing anything else with a message that says what was found."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} does not exist; train one with `python -m training.fit --out {path.parent}`"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise ValueError(f"could not read checkpoint {str(path)!r}: {error}") from error
    if not is_checkpoint(state):
        raise ValueError(f"{str(path)!r} is not a castream checkpoint (no 'format': {FORMAT!r} entry)")
    if state["format_version"] > FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} has checkpoint format {state['format_version']}; this castream reads up to {FORMAT_VERSION}"
        )
    return state


def build_model(state: dict[str, Any]) -> torch.nn.Module:
    """Rebuilds the model of a checkpoint, in eval mode, with its weights."""
    from training.model import CAStreamNet, ModelConfig

    model = CAStreamNet(ModelConfig(**state["model"]))
    model.load_state_dict(state["state_dict"])
    return model.eval()
