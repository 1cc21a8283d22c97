"""CA-Stream: a cross-attention token stream beside a frozen CNN, replacing global average pooling.

The stream is a learnable token that, at each tap of the backbone, attends to that tap's feature map
(the token is the query; the feature vectors are both keys and values; no projections, one head) and is
projected to the next tap's width. The last block's attention is the pooling weight, and the final
token goes through the backbone's own classifier.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from training.backbones import CONVNEXTS, Backbone, check_backbone_name

POOLINGS = ("ca", "gap")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model's modules (weights come from a state dict)."""

    backbone: str = "resnet18"
    num_classes: int = 10

    def __post_init__(self) -> None:
        check_backbone_name(self.backbone)
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CABlock(nn.Module):
    """One cross-attention step: ``a = softmax(F q / sqrt(d))``, ``out = Linear(sum_p a_p f_p)``."""

    def __init__(self, width: int, out_width: int, init: str = "xavier") -> None:
        super().__init__()
        self.width = width
        self.proj = nn.Linear(width, out_width)
        if init == "xavier":
            nn.init.xavier_uniform_(self.proj.weight)
        elif init == "trunc_normal":
            nn.init.trunc_normal_(self.proj.weight, std=0.02)
        else:
            raise ValueError(f"unknown init {init!r}; expected 'xavier' or 'trunc_normal'")
        nn.init.zeros_(self.proj.bias)

    def attend(self, features: Tensor, token: Tensor) -> Tensor:
        """Attention weights (N, P) of ``token`` (N, C) over ``features`` (N, P, C)."""
        scores = torch.einsum("npc,nc->np", features, token) / math.sqrt(self.width)
        return scores.softmax(dim=1)

    def forward(self, feature_map: Tensor, token: Tensor) -> tuple[Tensor, Tensor]:
        features = feature_map.flatten(2).transpose(1, 2)  # (N, P, C), P = H * W
        weights = self.attend(features, token)  # (N, P)
        pooled = torch.einsum("np,npc->nc", weights, features)  # (N, C)
        return self.proj(pooled), weights


class CAStream(nn.Module):
    """The token and one CA block per tap; ``widths`` are the taps' channel counts, stem first."""

    def __init__(self, widths: tuple[int, ...], out_width: int, init: str = "xavier") -> None:
        super().__init__()
        self.token = nn.Parameter(torch.normal(1.0, 1.0, size=(widths[0],)))
        next_widths = (*widths[1:], out_width)
        self.blocks = nn.ModuleList(CABlock(w, n, init) for w, n in zip(widths, next_widths, strict=True))

    def forward(self, taps: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Returns the final token (N, out_width) and the last block's weights (N, P_last)."""
        if len(taps) != len(self.blocks):
            raise ValueError(f"expected {len(self.blocks)} feature maps, got {len(taps)}")
        token = self.token.expand(taps[0].shape[0], -1)  # shape[0], not len(): keeps an exported batch axis symbolic
        for block, feature_map in zip(self.blocks, taps, strict=True):
            token, weights = block(feature_map.float(), token)
        return token, weights


class Output(NamedTuple):
    logits: Tensor  # (N, classes)
    attention: Tensor | None  # (N, h, w), sums to 1 per image; None for GAP pooling


class CAStreamNet(nn.Module):
    """A backbone with two interchangeable poolings: the CA stream, or the baseline's GAP."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = Backbone(config.backbone, num_classes=config.num_classes)
        init = "trunc_normal" if config.backbone in CONVNEXTS else "xavier"
        self.stream = CAStream(self.backbone.widths, self.backbone.head_width, init=init)

    def frozen_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """The backbone's taps for images (N, 3, H, W)."""
        return self.backbone.taps(x)

    def forward_head(self, taps: list[Tensor], pooling: str = "ca") -> Output:
        # Pooling and head are ~0.25 % of the compute: run them in float32 whatever the backbone's precision.
        with torch.autocast(taps[-1].device.type, enabled=False):
            return self._pool_and_classify(taps, pooling)

    def _pool_and_classify(self, taps: list[Tensor], pooling: str) -> Output:
        if pooling == "gap":
            return Output(self.backbone.classify(taps[-1].float().mean(dim=(2, 3))), None)
        if pooling != "ca":
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        token, weights = self.stream(taps)
        height, width = taps[-1].shape[-2:]
        return Output(self.backbone.classify(token), weights.view(-1, height, width))

    def forward(self, x: Tensor, pooling: str = "ca") -> Output:
        return self.forward_head(self.forward_features(x), pooling)

    def class_maps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Exact class-specific maps of the CA model, without gradients.

        Returns:
            ``(maps, logits)``: maps (N, classes, h, w) whose sums over positions plus the head's constant
            term equal the logits (N, classes).
        """
        taps = self.forward_features(x)
        token = self.stream.token.expand(len(x), -1)
        for block, feature_map in zip(self.stream.blocks[:-1], taps[:-1], strict=True):
            token, _ = block(feature_map.float(), token)
        last = self.stream.blocks[-1]
        features = taps[-1].float().flatten(2).transpose(1, 2)  # (N, P, C)
        weights = last.attend(features, token)  # (N, P)
        contributions, constant = self.backbone.decompose_head(last.proj(features), weights)
        height, width = taps[-1].shape[-2:]
        maps = contributions.transpose(1, 2).reshape(len(x), -1, height, width)
        return maps, maps.sum(dim=(2, 3)) + constant
