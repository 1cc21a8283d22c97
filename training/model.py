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

from service.contract import ATTENTION, CLASS_MAPS, EMBEDDING, LOGITS, POOLINGS, output_names
from training.backbones import Backbone, check_backbone_name, check_output_stride

STREAM_TAPS = ("all", "last")  # the stream reads the stem and every stage, or the last stage alone
STREAM_INITS = ("paper", "identity", "gap")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model's modules (weights come from a state dict)."""

    backbone: str = "resnet18"
    num_classes: int = 10
    stream_taps: str = "all"
    output_stride: int = 32  # the last feature map's cell in input pixels: 32, or 16 with the last stage dilated

    def __post_init__(self) -> None:
        check_backbone_name(self.backbone)
        check_output_stride(self.output_stride)
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes!r}")
        if self.stream_taps not in STREAM_TAPS:
            raise ValueError(f"unknown stream_taps {self.stream_taps!r}; expected one of {STREAM_TAPS}")

    def to_dict(self) -> dict[str, Any]:
        """The fields, ``output_stride`` only where it is not 32: a default model's record reads as it always did."""
        fields = asdict(self)
        if self.output_stride == 32:
            del fields["output_stride"]
        return fields


class CABlock(nn.Module):
    """One cross-attention step: ``a = softmax(F q / sqrt(d))``, ``out = Linear(sum_p a_p f_p)``."""

    def __init__(self, width: int, out_width: int, init: str = "xavier") -> None:
        super().__init__()
        self.width = width
        self.proj = nn.Linear(width, out_width)
        self.reset(init)

    @torch.no_grad()
    def reset(self, init: str) -> None:
        """Initialises the projection: ``xavier`` or ``trunc_normal`` (the paper's), ``identity`` or ``zero``."""
        weight = self.proj.weight
        if init == "xavier":
            nn.init.xavier_uniform_(weight)
        elif init == "trunc_normal":
            nn.init.trunc_normal_(weight, std=0.02)
        elif init == "identity":
            if weight.shape[0] != weight.shape[1]:
                widths = f"{weight.shape[1]} -> {weight.shape[0]}"
                raise ValueError(f"an identity projection needs equal widths, got {widths}")
            nn.init.eye_(weight)
        elif init == "zero":
            nn.init.zeros_(weight)
        else:
            raise ValueError(f"unknown init {init!r}; expected 'xavier', 'trunc_normal', 'identity' or 'zero'")
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
    """The token and one CA block per tap it reads; ``widths`` are the backbone's tap widths, stem first.

    Args:
        taps: ``all`` (the stem and every stage, as the paper) or ``last`` (the last stage alone).
        init: ``paper`` (Xavier, or ``paper_init``), ``identity`` (the last projection is the identity, so the
            final token is the attention-pooled feature the classifier was trained on), or ``gap`` (as
            ``identity``, and the last block's query starts at zero: uniform attention, so the untrained
            stream computes exactly the backbone's GAP prediction).
    """

    def __init__(
        self,
        widths: tuple[int, ...],
        out_width: int,
        taps: str = "all",
        init: str = "paper",
        paper_init: str = "xavier",
    ) -> None:
        super().__init__()
        self.reads = tuple(range(len(widths))) if taps == "all" else (len(widths) - 1,)
        read_widths = tuple(widths[i] for i in self.reads)
        self.token = nn.Parameter(torch.normal(1.0, 1.0, size=(read_widths[0],)))
        next_widths = (*read_widths[1:], out_width)
        self.blocks = nn.ModuleList(CABlock(w, n, paper_init) for w, n in zip(read_widths, next_widths, strict=True))
        self.initialise(init, paper_init)

    @torch.no_grad()
    def initialise(self, init: str, paper_init: str = "xavier") -> None:
        """Re-initialises the stream (see the class); the token is drawn from N(1, 1) as in the paper."""
        if init not in STREAM_INITS:
            raise ValueError(f"unknown stream init {init!r}; expected one of {STREAM_INITS}")
        self.token.normal_(1.0, 1.0)
        for block in self.blocks:
            block.reset(paper_init)
        if init in ("identity", "gap"):
            self.blocks[-1].reset("identity")
        if init == "gap":
            if len(self.blocks) > 1:
                self.blocks[-2].reset("zero")
            else:
                self.token.zero_()

    def select(self, taps: list[Tensor]) -> list[Tensor]:
        """The feature maps this stream reads, of the backbone's ``taps``."""
        return [taps[i] for i in self.reads]

    def query(self, taps: list[Tensor]) -> Tensor:
        """The token (N, C_last) that queries the last block, from the backbone's ``taps``."""
        token = self.token.expand(taps[0].shape[0], -1)  # shape[0], not len(): keeps an exported batch axis symbolic
        for block, feature_map in zip(self.blocks[:-1], self.select(taps)[:-1], strict=True):
            token, _ = block(feature_map.float(), token)
        return token

    def forward(self, taps: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Returns the final token (N, out_width) and the last block's weights (N, P_last)."""
        if len(taps) <= max(self.reads):
            raise ValueError(f"expected at least {max(self.reads) + 1} feature maps, got {len(taps)}")
        return self.blocks[-1](taps[-1].float(), self.query(taps))


class Output(NamedTuple):
    logits: Tensor  # (N, classes)
    attention: Tensor | None  # (N, h, w), sums to 1 per image; None for GAP pooling


class CAStreamNet(nn.Module):
    """A backbone with two interchangeable poolings: the CA stream, or the baseline's GAP."""

    def __init__(self, config: ModelConfig, stream_init: str = "paper") -> None:
        super().__init__()
        self.config = config
        self.backbone = Backbone(config.backbone, num_classes=config.num_classes, output_stride=config.output_stride)
        self.stream = CAStream(
            self.backbone.widths, self.backbone.head_width, config.stream_taps, stream_init, self.paper_init
        )

    @property
    def paper_init(self) -> str:
        """The projections' initialisation in the paper, as the backbone's family gives it."""
        return self.backbone.family.projection_init

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """The backbone's taps for images (N, 3, H, W)."""
        return self.backbone.taps(x)

    def forward_head(self, taps: list[Tensor], pooling: str = "ca") -> Output:
        # Pooling and head are ~0.25 % of the compute: run them in float32 whatever the backbone's precision.
        with torch.autocast(taps[-1].device.type, enabled=False):
            return self._pool_and_classify(taps, pooling)

    def pool(self, taps: list[Tensor], pooling: str = "ca") -> tuple[Tensor, Tensor | None]:
        """The pooled vector (N, D) the classifier reads, and the pooling weights (N, P_last) (None for GAP).

        CA: the stream's final token and its last block's attention; GAP: the mean of the last feature map.
        """
        if pooling == "gap":
            return taps[-1].float().mean(dim=(2, 3)), None
        if pooling != "ca":
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        return self.stream(taps)

    def _pool_and_classify(self, taps: list[Tensor], pooling: str) -> Output:
        pooled, weights = self.pool(taps, pooling)
        height, width = taps[-1].shape[-2:]
        attention = None if weights is None else weights.view(-1, height, width)
        return Output(self.backbone.classify(pooled), attention)

    def forward(self, x: Tensor, pooling: str = "ca") -> Output:
        return self.forward_head(self.forward_features(x), pooling)

    @torch.no_grad()
    def graph_outputs(self, x: Tensor, pooling: str = "ca") -> dict[str, Tensor]:
        """The exported graph's outputs for ``pooling`` by name (the contract's table), computed the plain PyTorch
        way: the reference that export checks the graph against. Float32 whatever the backbone's precision."""
        taps = self.forward_features(x)
        with torch.autocast(taps[-1].device.type, enabled=False):
            pooled, weights = self.pool(taps, pooling)
            outputs = {LOGITS: self.backbone.classify(pooled), EMBEDDING: pooled}
            if weights is not None:
                outputs[ATTENTION] = weights.view(-1, *taps[-1].shape[-2:])
            outputs[CLASS_MAPS] = self.class_maps_of_taps(taps, pooling)[0]
        return {name: outputs[name] for name in output_names(pooling)}

    def class_maps(self, x: Tensor, pooling: str = "ca") -> tuple[Tensor, Tensor]:
        """Exact class-specific maps of the model with ``pooling``: CA's over the stream's attention, GAP's the class
        activation maps (CAM).

        Returns:
            ``(maps, logits)``: maps (N, classes, h, w) whose sums over positions plus the head's constant
            term equal the logits (N, classes).
        """
        return self.class_maps_of_taps(self.forward_features(x), pooling)

    def class_maps_of_taps(self, taps: list[Tensor], pooling: str = "ca") -> tuple[Tensor, Tensor]:
        """:meth:`class_maps` from the backbone's taps."""
        features = taps[-1].float().flatten(2).transpose(1, 2)  # (N, P, C)
        if pooling == "gap":  # the pooled vector is the features' mean: every position weighs 1/P, as they are
            values, weights = features, features.new_full(features.shape[:2], 1 / features.shape[1])  # (N, P)
        elif pooling == "ca":
            last = self.stream.blocks[-1]
            values, weights = last.proj(features), last.attend(features, self.stream.query(taps))  # (N, P, D), (N, P)
        else:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        contributions, constant = self.backbone.decompose_head(values, weights)
        height, width = taps[-1].shape[-2:]
        maps = contributions.transpose(1, 2).reshape(len(features), -1, height, width)
        return maps, maps.sum(dim=(2, 3)) + constant
