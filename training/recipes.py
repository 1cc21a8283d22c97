"""Named ways to train the CA stream: how it starts, and the optimiser that moves it.

``paper`` is the paper's recipe (projections initialised with Xavier, or a truncated normal for ConvNeXt;
SGD, lr 0.1, momentum 0.9, weight decay 1e-4). ``gap-start`` is the default: the stream starts out as
exactly the backbone's GAP prediction (the last projection is the identity and the last block's query
is zero, so its attention is uniform) and AdamW moves it from there. Starting from the function the
frozen classifier was trained on, the attention only has to learn *where* to pool; from a random start
it also learns what to feed the classifier, and on the default data it settled beside the object. The
ablation that chose it: ``python -m interpret.ablation`` (docs/ablation.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from training.model import STREAM_INITS, STREAM_TAPS

OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class StreamRecipe:
    init: str  # one of STREAM_INITS
    optimizer: str  # one of OPTIMIZERS
    lr: float
    weight_decay: float = 1e-4
    momentum: float = 0.9
    taps: str = "all"  # one of STREAM_TAPS

    def __post_init__(self) -> None:
        if self.init not in STREAM_INITS:
            raise ValueError(f"unknown stream init {self.init!r}; expected one of {STREAM_INITS}")
        if self.taps not in STREAM_TAPS:
            raise ValueError(f"unknown stream taps {self.taps!r}; expected one of {STREAM_TAPS}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; expected 'sgd' or 'adamw'")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RECIPES = {
    "gap-start": StreamRecipe(init="gap", optimizer="adamw", lr=3e-4),
    "paper": StreamRecipe(init="paper", optimizer="sgd", lr=0.1),
}
DEFAULT_RECIPE = "gap-start"
DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3}  # where an optimiser other than the recipe's is asked for


def recipe(name: str) -> StreamRecipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; expected one of {', '.join(RECIPES)}")
    return RECIPES[name]
