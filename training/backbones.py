"""Torchvision ResNets and ConvNeXts seen as a list of feature taps plus a frozen classifier head.

A CA stream reads the stem's output and every stage's output, so no stage is skipped. The head is
whatever the backbone applies after global average pooling: ``fc`` for a ResNet, LayerNorm2d then a
Linear layer for a ConvNeXt.
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
CONVNEXTS = ("convnext_tiny", "convnext_small", "convnext_base", "convnext_large")
BACKBONES = RESNETS + CONVNEXTS


def check_backbone_name(name: str) -> str:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
    return name


class Backbone(nn.Module):
    """A torchvision classifier seen as stages (each output is a tap) and a ``head``.

    Attributes:
        widths: channel count of each tap, stem first.
        head_width: input width of the head (the width of the pooled vector).
    """

    def __init__(self, name: str, num_classes: int = 1000) -> None:
        super().__init__()
        self.name = check_backbone_name(name)
        # Keep torchvision's module tree as it is, so its state dicts load unchanged into ``net``.
        self.net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        self.widths = tuple(self._tap_widths())
        self.head_width = self.classifier.in_features

    def _stages(self) -> list[nn.Module]:
        net = self.net
        if self.name in RESNETS:
            stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
            return [stem, net.layer1, net.layer2, net.layer3, net.layer4]
        # features: stem, stage1, down, stage2, down, stage3, down, stage4; a tap after each stage.
        f = net.features
        return [f[0], f[1], nn.Sequential(f[2], f[3]), nn.Sequential(f[4], f[5]), nn.Sequential(f[6], f[7])]

    @property
    def head(self) -> nn.Module:
        """What the backbone applies after pooling: ``fc``, or ConvNeXt's LayerNorm2d, Flatten, Linear."""
        return nn.Sequential(self.net.fc) if self.name in RESNETS else self.net.classifier

    @property
    def classifier(self) -> nn.Linear:
        """The final Linear layer of the head."""
        return self.net.fc if self.name in RESNETS else self.net.classifier[-1]

    @property
    def classifier_prefix(self) -> str:
        """State-dict prefix of the final Linear layer inside ``net``."""
        return "fc." if self.name in RESNETS else "classifier.2."

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features

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
        for stage in self._stages():
            x = stage(x)
            features.append(x)
        return features

    def classify(self, pooled: Tensor) -> Tensor:
        """Applies the head to a pooled vector (N, C) and returns logits (N, classes)."""
        return self.head(pooled[:, :, None, None] if self.name in CONVNEXTS else pooled)

    def decompose_head(self, values: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        """Splits the head's logits over positions, exactly, for a pooled vector ``sum_p weights_p values_p``.

        Args:
            values: per-position vectors (N, P, C) whose weighted sum is the head's input.
            weights: per-position weights (N, P) that sum to 1 over P.

        Returns:
            ``(contributions, constant)``: (N, P, classes) and (N, classes) with
            ``contributions.sum(1) + constant`` equal to the logits.
        """
        linear = self.classifier
        pooled = torch.einsum("np,npc->nc", weights, values)
        if self.name in CONVNEXTS:
            # LayerNorm is affine once its statistics are fixed: centre each value by its own mean (the
            # weighted means add up to the pooled mean) and divide by the pooled vector's deviation.
            norm = self.head[0]
            var = pooled.var(dim=1, unbiased=False, keepdim=True)  # (N, 1)
            scale = torch.rsqrt(var + norm.eps)
            values = (values - values.mean(dim=2, keepdim=True)) * scale[:, None, :] * norm.weight
            constant = linear(norm.bias.expand(len(pooled), -1))
        else:
            constant = linear.bias.expand(len(pooled), -1)
        contributions = weights[..., None] * (values @ linear.weight.T)
        return contributions, constant


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
