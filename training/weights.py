"""Resolves ``--weights``: a torchvision weights name, a local state-dict file, or a castream checkpoint."""

from __future__ import annotations

import os
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision

from training import checkpoint
from training.checkpoint import Checkpoint
from training.families import family_of


@dataclass
class InitialWeights:
    """A state dict for the torchvision network (``net``) or a whole castream checkpoint.

    Attributes:
        kind: "random", "torchvision", "file" or "checkpoint".
        pretrained: whether the backbone's features are trained (a linear probe suffices).
        num_classes: outputs of the classifier in these weights.
        transforms: torchvision's preprocessing for these weights, when known.
        classes: the class names of torchvision's weights (their ``categories``), in logit order.
    """

    kind: str
    pretrained: bool
    num_classes: int | None = None
    state_dict: dict[str, torch.Tensor] | None = None
    checkpoint: Checkpoint | None = None
    transforms: Any | None = None
    name: str | None = None
    classes: tuple[str, ...] | None = None


def resolve(spec: str | None, backbone: str) -> InitialWeights:
    """Loads the weights that ``spec`` names for ``backbone``."""
    if spec in (None, "", "none", "random"):
        return InitialWeights(kind="random", pretrained=False)
    path = Path(spec)
    if path.is_file():
        return _from_file(path, backbone)
    if os.sep in spec or spec.endswith((".pt", ".pth")):
        raise FileNotFoundError(f"weights file {spec!r} does not exist")
    return _from_torchvision(spec, backbone)


def _from_file(path: Path, backbone: str) -> InitialWeights:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or foreign files
        raise ValueError(f"could not read weights file {str(path)!r}: {error}") from error
    if checkpoint.is_checkpoint(loaded):
        record = checkpoint.parse(loaded, str(path))
        if record.model.backbone != backbone:
            raise ValueError(
                f"checkpoint {str(path)!r} holds a {record.model.backbone} model, not --backbone {backbone}"
            )
        return InitialWeights("checkpoint", True, record.model.num_classes, checkpoint=record, name=str(path))
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{str(path)!r} is neither a state dict nor a castream checkpoint")
    state = {key.removeprefix("module."): value for key, value in loaded.items()}
    classifier = family_of(backbone).classifier_prefix + "weight"
    if classifier not in state:
        raise ValueError(
            f"{str(path)!r} has no classifier weights ({classifier!r}); expected a torchvision {backbone} state dict"
        )
    return InitialWeights("file", True, state[classifier].shape[0], state_dict=state, name=str(path))


def _from_torchvision(name: str, backbone: str) -> InitialWeights:
    enum = torchvision.models.get_model_weights(backbone)
    try:
        weights = enum[name.removeprefix(f"{enum.__name__}.")]
    except KeyError:
        known = ", ".join(w.name for w in enum)
        raise ValueError(f"unknown weights {name!r} for {backbone}; expected a file or one of {known}") from None
    target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    try:
        state = weights.get_state_dict(progress=True)
    except (urllib.error.URLError, OSError) as error:
        raise RuntimeError(
            f"could not download {weights.url} ({error}). Without network access, download it elsewhere and "
            f"put it at {target} (or pass the file itself with --weights)"
        ) from error
    return InitialWeights(
        "torchvision",
        True,
        len(weights.meta["categories"]),
        state_dict=state,
        transforms=weights.transforms(),
        name=f"{enum.__name__}.{weights.name}",
        classes=tuple(weights.meta["categories"]),
    )
