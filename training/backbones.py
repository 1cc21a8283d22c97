"""A torchvision classifier seen as a list of feature taps plus a frozen classifier head, as its family says.

A CA stream reads the stem's output and every stage's output, so no stage is skipped. The head is whatever
the backbone applies after global average pooling. Which modules those are is the family's knowledge
(``training.families``); this module reads it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from training.families import BACKBONES, AffineHead, Family, check_output_stride, family_of

__all__ = ["BACKBONES", "Backbone", "check_backbone_name", "check_output_stride", "fold_batch_norm"]


def check_backbone_name(name: str) -> str:
    family_of(name)  # raises for a name no family covers
    return name


class Backbone(nn.Module):
    """A torchvision classifier seen as stages (each output is a tap) and a ``head``.

    Attributes:
        family: the adapter that says which modules are the stages, the head and the classifier.
        output_stride: the last tap's cell in input pixels: 32, or 16 with the last stage dilated (the family's
            ``stride_16``); the taps' widths and the parameters are the same at either.
        widths: channel count of each tap, stem first.
        head_width: input width of the head (the width of the pooled vector).
    """

    def __init__(self, name: str, num_classes: int = 1000, output_stride: int = 32) -> None:
        super().__init__()
        self.name = check_backbone_name(name)
        self.family: Family = family_of(name)
        self.output_stride = output_stride
        # Keep torchvision's module tree as it is, so its state dicts load unchanged into ``net``.
        self.net = self.family.network(name, num_classes, output_stride)
        self.widths = tuple(self._tap_widths())
        self.head_width = self.family.head_width(self.net)

    @property
    def head(self) -> nn.Sequential:
        """What the backbone applies after pooling, as a Sequential."""
        return self.family.head_of(self.net)

    @property
    def classifier(self) -> nn.Linear:
        """The final Linear layer of the head."""
        return self.family.classifier_of(self.net)

    @property
    def classifier_prefix(self) -> str:
        """State-dict prefix of the final Linear layer inside ``net``."""
        return self.family.classifier_prefix

    @property
    def cam_layer(self) -> nn.Module:
        """The module CAM-style methods hook: the last stage, whose output is the last tap."""
        return self.family.cam_layer_of(self.net)

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features

    def affine_head(self, dtype: torch.dtype | None = None) -> AffineHead:
        """The head as an affine map, for exact decompositions (see :class:`training.families.AffineHead`)."""
        return self.family.affine_head(self.net, dtype)

    @torch.no_grad()
    def _tap_widths(self) -> list[int]:
        probe = torch.zeros(1, 3, 64, 64)
        was_training = self.training
        self.eval()
        widths = [feature.shape[1] for feature in self.taps(probe)]
        self.train(was_training)
        return widths

    def taps(self, x: Tensor) -> list[Tensor]:
        """Feature maps after the stem and after each stage, each (N, C_i, H_i, W_i)."""
        features = []
        for stage in self.family.stages(self.net):
            x = stage(x)
            features.append(x)
        return features

    def classify(self, pooled: Tensor) -> Tensor:
        """Applies the head to a pooled vector (N, C) and returns logits (N, classes)."""
        return self.head(pooled[:, :, None, None] if self.family.head_reads_map else pooled)

    def decompose_head(self, values: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        """Splits the head's logits over positions, exactly, for a pooled vector ``sum_p weights_p values_p``.

        Args:
            values: per-position vectors (N, P, C) whose weighted sum is the head's input.
            weights: per-position weights (N, P) that sum to 1 over P.

        Returns:
            ``(contributions, constant)``: (N, P, classes) and (N, classes) with
            ``contributions.sum(1) + constant`` equal to the logits.
        """
        head = self.affine_head()
        evidence = head.evidence(values)  # (N, P, classes)
        if head.normalised:  # one factor per image, from the pooled vector's spread
            evidence = evidence * head.scale(torch.einsum("np,npc->nc", weights, values))[:, :, None]
        contributions = weights[..., None] * evidence
        return contributions, head.constant.expand(len(values), -1)


def fold_batch_norm(module: nn.Module) -> int:
    """Folds every eval-mode BatchNorm into the convolution before it, in place; returns how many.

    The function computed is the same (up to float rounding) and each forward pass is cheaper. Pairs are
    found by torchvision's naming (``convK`` then ``bnK`` in one module, as in ResNets) and inside
    ``nn.Sequential`` (a convolution directly followed by a BatchNorm, as in ResNet downsampling).
    """
    folded = 0
    for parent in list(module.modules()):
        pairs = []
        for name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm2d) and name.startswith("bn"):
                pairs.append(("conv" + name[2:], name))
        if isinstance(parent, nn.Sequential):
            names = [name for name, _ in parent.named_children()]
            pairs += [(a, b) for a, b in zip(names, names[1:], strict=False)]
        for conv_name, bn_name in pairs:
            conv, bn = getattr(parent, conv_name, None), getattr(parent, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and not bn.training:
                if conv.out_channels == bn.num_features:
                    setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
                    setattr(parent, bn_name, nn.Identity())
                    folded += 1
    return folded
