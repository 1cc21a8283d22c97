"""The checkpoint contract: one typed record, written by :func:`save` and read by :func:`load`, nowhere else.

On disk a checkpoint is a plain dict of tensors and Python primitives, so it loads with
``weights_only=True``, tagged with :data:`FORMAT` and :data:`FORMAT_VERSION`. Everything else in the
project sees a :class:`Checkpoint`: the model's configuration, its weights, the class names, the
preprocessing, the data set it was trained on, its metrics and, for an unfinished run, what a resume
needs. A file of an older format is migrated on reading (:data:`MIGRATIONS`); one of a newer format, one
with fields missing, and anything that is not a castream checkpoint are refused with a message that
says what was found. Writes are atomic (:func:`training.files.atomic_write`): a crash at any moment
leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from service.contract import VERSION
from training.data import DataConfig, Preprocessing
from training.files import atomic_write
from training.model import CAStreamNet, ModelConfig

FORMAT = "castream-checkpoint"
FORMAT_VERSION = 1
FINISHED = "done"  # the stage of a run that completed
# The default model, shipped with the project (`make train` reproduces it): what commands read unless told otherwise.
DEFAULT = "checkpoints/default/castream.pt"

# Format N -> N + 1, applied in turn to a file older than FORMAT_VERSION. Each takes and returns the raw dict.
# A new field with a default that means what older files did (ModelConfig.output_stride: 32) needs no new format.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


@dataclass(frozen=True)
class Checkpoint:
    """A self-describing checkpoint: enough to rebuild the model and its inputs without the command line.

    Attributes:
        model: the modules to build (backbone, classes, stream taps).
        state_dict: the unwrapped model's weights and buffers, on the CPU.
        classes: class names, in logit order.
        preprocessing: what the deployed model expects of an image.
        data: the data set it was trained on, enough to read its images again.
        stage: the stage the weights come from; :data:`FINISHED` once the run completed.
        metrics: validation top-1 in percent (``val_top1_gap``, ``val_top1_ca``) of a finished run.
        config: the run's resolved configuration (its ``config.json``): options, plan, runtime, revision.
        resume_point: what resuming the unfinished ``stage`` needs (epoch, optimizer, schedule, RNG).
        completed: finished stages with their history and seconds.
        version: the castream version that wrote it.
    """

    model: ModelConfig
    state_dict: dict[str, Tensor]
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    data: DataConfig
    stage: str = FINISHED
    metrics: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    resume_point: dict[str, Any] = field(default_factory=dict)
    completed: dict[str, Any] = field(default_factory=dict)
    version: str = VERSION

    def __post_init__(self) -> None:
        if len(self.classes) != self.model.num_classes:
            raise ValueError(f"{len(self.classes)} class names for a model of {self.model.num_classes} classes")

    @property
    def finished(self) -> bool:
        return self.stage == FINISHED

    def build_model(self) -> CAStreamNet:
        """The model, in eval mode, with its weights."""
        model = CAStreamNet(self.model)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def to_dict(self) -> dict[str, Any]:
        """The on-disk form: tensors and primitives only, tagged with the format."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "model": self.model.to_dict(),
            "state_dict": self.state_dict,
            "classes": list(self.classes),
            "preprocessing": self.preprocessing.to_dict(),
            "data": self.data.to_dict(),
            "config": self.config,
            "stage": self.stage,
            "stage_state": self.resume_point,
            "completed": self.completed,
            "metrics": self.metrics,
        }


# The entries of a file of the current format, besides its "format" tag and "format_version".
FIELDS = (
    "version", "model", "state_dict", "classes", "preprocessing", "data", "config", "stage", "stage_state",
    "completed", "metrics",
)  # fmt: skip


def is_checkpoint(obj: Any) -> bool:
    """Whether ``obj``, as ``torch.load`` returned it, is tagged as a castream checkpoint."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def parse(raw: Any, source: str) -> Checkpoint:
    """The record of a loaded file, migrated to the current format; ``ValueError`` names what is wrong."""
    if not is_checkpoint(raw):
        raise ValueError(f"{source!r} is not a castream checkpoint (no 'format': {FORMAT!r} entry)")
    found = raw.get("format_version")
    if not isinstance(found, int) or found < 1:
        raise ValueError(f"{source!r} has no valid checkpoint format version (found {found!r})")
    if found > FORMAT_VERSION:
        raise ValueError(
            f"{source!r} has checkpoint format {found}, newer than this castream reads ({FORMAT_VERSION}); "
            "upgrade castream to load it"
        )
    for version in range(found, FORMAT_VERSION):
        raw = MIGRATIONS[version](dict(raw))
    missing = [name for name in FIELDS if name not in raw]
    if missing:
        raise ValueError(
            f"{source!r} is a castream checkpoint of format {FORMAT_VERSION} with fields missing: "
            f"{', '.join(missing)}; it is damaged or was not written by castream: train it again"
        )
    try:
        return Checkpoint(
            model=ModelConfig(**raw["model"]),
            state_dict=dict(raw["state_dict"]),
            classes=tuple(str(name) for name in raw["classes"]),
            preprocessing=Preprocessing.from_dict(raw["preprocessing"]),
            data=DataConfig(**raw["data"]),
            stage=str(raw["stage"]),
            metrics=dict(raw["metrics"]),
            config=dict(raw["config"]),
            resume_point=dict(raw["stage_state"]),
            completed=dict(raw["completed"]),
            version=str(raw["version"]),
        )
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source!r} holds an invalid checkpoint record: {error}") from error


def save(record: Checkpoint, path: str | Path) -> Path:
    """Writes ``record`` atomically to ``path``."""
    path = Path(path)
    with atomic_write(path) as file:
        torch.save(record.to_dict(), file)
    return path


def load(path: str | Path) -> Checkpoint:
    """Reads a castream checkpoint, refusing anything else with a message that says what was found."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} does not exist; train one with `python -m training.fit --out {path.parent}`"
        )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise ValueError(f"could not read checkpoint {str(path)!r}: {error}") from error
    return parse(raw, str(path))
