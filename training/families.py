"""Backbone families: everything generic code needs to know of a torchvision classifier, one record per family.

A :class:`Family` names the torchvision models it covers and says where the stream reads (the stem and each stage,
so no stage is skipped), what the head does after pooling, which Linear layer is the classifier and its key in a
state dict, whether a LayerNorm comes before it (the head as an affine map, for exact class maps), how the paper
initialises the stream's projections, the preprocessing to use without pretrained weights, and which module
CAM-style baselines hook. Modules are named by their dotted path in torchvision's module tree, so the model keeps
that tree and its state dicts load unchanged. Nothing outside this module names a family.

Each family also says how to reach an output stride of 16 (:data:`OUTPUT_STRIDES`): the last stage keeps the
previous stage's resolution and its convolutions are dilated, as DeepLab and timm do. Only strides, dilations and
paddings change, never a parameter's name or shape, so pretrained weights and checkpoints load into either network.
Where the network has no global operation inside the last stage, the stride-16 map sampled at every other position
is the stride-32 map (for inputs a multiple of 32 on a side); a squeeze-and-excitation unit averages over the finer
grid instead.

Beside the paper's ResNets and ConvNeXts, RegNets (RegNetX and RegNetY, Radosavovic et al. 2020) are a third
family: small and fast on a CPU (RegNetY-400MF has 4.3 M parameters), BatchNorm only (so the frozen backbone folds
like a ResNet), with a plain ``fc`` after pooling (so class maps need no LayerNorm factor), one module per stage
(``trunk_output.block1`` to ``block4``) and one reference evaluation for every size (torchvision's first weights:
resize 256, crop 224, bilinear), where EfficientNet's resolution and interpolation change with each size and its
last stage is followed by one more convolution. ``regnet_y_128gf`` is left out: torchvision has only weights
fine-tuned at 384 px for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision
from torch import Tensor, nn

from service.contract import OUTPUT_STRIDES
from training.data import IMAGENET_MEAN, IMAGENET_STD, Preprocessing


def check_output_stride(stride: int) -> int:
    """``stride`` if the families can build it (:data:`OUTPUT_STRIDES`); ValueError otherwise."""
    if stride not in OUTPUT_STRIDES:
        raise ValueError(
            f"output stride {stride!r} is not supported; expected 32 (the backbone as torchvision builds it) or 16 "
            "(its last stage at the previous stage's resolution, dilated: twice the grid on a side)"
        )
    return stride


def normalising_scale(pooled: Tensor, eps: float) -> Tensor:
    """LayerNorm's per-vector factor ``1 / sqrt(var(z) + eps)`` of vectors (N, D), as (N, 1)."""
    return torch.rsqrt(pooled.var(dim=1, unbiased=False, keepdim=True) + eps)


@dataclass(frozen=True)
class AffineHead:
    """The head after pooling as ``logits = s(z) * (weight @ c(z)) + constant`` for pooled vectors z (N, D).

    A plain Linear layer: ``c(z) = z``, ``s = 1``, its weight and bias. LayerNorm then Linear is affine once the
    pooled vector's mean and spread are fixed: ``c(z) = z - mean(z)`` is linear (the mean of a weighted sum of
    vectors is the weighted sum of their means), ``s(z) = 1 / sqrt(var(z) + eps)`` is one factor per image,
    ``weight = W diag(gamma)`` and ``constant = W beta + b``. So for ``z = sum_p a_p v_p`` the logits split
    exactly over positions: ``sum_p a_p s(z) (weight @ c(v_p)) + constant``.
    """

    weight: Tensor  # (K, D)
    constant: Tensor  # (K,)
    eps: float | None = None  # the LayerNorm's epsilon; None: no LayerNorm, s = 1

    @classmethod
    def of(cls, linear: nn.Linear, norm: nn.LayerNorm | None = None, dtype: torch.dtype | None = None) -> AffineHead:
        """The affine map of ``linear`` (K x D), after ``norm`` when there is one, in ``dtype`` if given."""
        weight, bias = linear.weight, linear.bias
        if dtype is not None:
            weight, bias = weight.to(dtype), bias.to(dtype)
        if norm is None:
            return cls(weight, bias)
        gamma, beta = norm.weight.to(weight.dtype), norm.bias.to(weight.dtype)
        return cls(weight * gamma, weight @ beta + bias, float(norm.eps))

    @property
    def normalised(self) -> bool:
        """Whether a LayerNorm comes first, so that ``s(z)`` is not 1."""
        return self.eps is not None

    def scale(self, pooled: Tensor) -> Tensor:
        """``s(z)`` per image (N, 1) for pooled vectors (N, D)."""
        return normalising_scale(pooled, self.eps) if self.eps is not None else pooled.new_ones(len(pooled), 1)

    def evidence(self, values: Tensor) -> Tensor:
        """``weight @ c(v)`` for vectors (..., D): (..., K), without the scale and the constant."""
        if self.eps is not None:
            values = values - values.mean(dim=-1, keepdim=True)
        return values @ self.weight.T

    def fold(self, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
        """``evidence`` of an affine map ``weight @ f + bias`` (D x C) before the head, as ``(M, m)``: M f + m."""
        if self.eps is not None:  # centring the output of an affine map centres its rows and its bias
            weight, bias = weight - weight.mean(dim=0, keepdim=True), bias - bias.mean()
        return self.weight @ weight, self.weight @ bias


@dataclass(frozen=True)
class Family:
    """One backbone family, read by generic code.

    Attributes:
        name: the family's name.
        members: the torchvision model names it covers.
        stages: torchvision's network -> the modules that, run in turn, give the stem's output and each stage's
            output (the taps).
        head: dotted path of what the network applies after global average pooling.
        classifier: dotted path of the head's final Linear layer.
        stride_16: ``(name, num_classes)`` -> torchvision's network at output stride 16, random weights: its last stage
            at the previous stage's resolution, that stage's convolutions dilated, every parameter's name and shape
            as at stride 32.
        head_norm: dotted path of a LayerNorm the head applies before the classifier; None for a plain Linear.
        head_reads_map: whether the head takes the pooled vector as a (N, C, 1, 1) map rather than (N, C).
        projection_init: the paper's initialisation of the stream's projections (see ``CABlock.reset``).
        cam_layer: dotted path of the module CAM-style baselines hook: the last stage, whose output is the last tap.
        resize, crop: the reference evaluation's resize for a crop, scaled to the crop used when no pretrained
            weights say otherwise.
        mean, std, interpolation: that evaluation's normalisation and resampling.
    """

    name: str
    members: tuple[str, ...]
    stages: Callable[[nn.Module], list[nn.Module]]
    stride_16: Callable[[str, int], nn.Module]
    head: str = "fc"  # torchvision's plain Linear head
    classifier: str = "fc"
    head_norm: str | None = None
    head_reads_map: bool = False
    projection_init: str = "xavier"
    cam_layer: str = ""
    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    @property
    def classifier_prefix(self) -> str:
        """State-dict prefix of the classifier inside torchvision's network (its keys are this + weight, bias)."""
        return self.classifier + "."

    def network(self, name: str, num_classes: int, output_stride: int = 32) -> nn.Module:
        """torchvision's network ``name`` with random weights and ``num_classes`` outputs, its last feature map at
        1/``output_stride`` of the input."""
        if check_output_stride(output_stride) == 16:
            return self.stride_16(name, num_classes)
        return _torchvision(name, num_classes)

    def head_of(self, net: nn.Module) -> nn.Sequential:
        """What ``net`` applies after pooling, as a Sequential."""
        head = net.get_submodule(self.head)
        return head if isinstance(head, nn.Sequential) else nn.Sequential(head)

    def classifier_of(self, net: nn.Module) -> nn.Linear:
        return net.get_submodule(self.classifier)

    def head_width(self, net: nn.Module) -> int:
        """Width of the pooled vector the head reads."""
        return self.classifier_of(net).in_features

    def affine_head(self, net: nn.Module, dtype: torch.dtype | None = None) -> AffineHead:
        """The head of ``net`` as an affine map (see :class:`AffineHead`)."""
        norm = None if self.head_norm is None else net.get_submodule(self.head_norm)
        return AffineHead.of(self.classifier_of(net), norm, dtype)

    def cam_layer_of(self, net: nn.Module) -> nn.Module:
        return net.get_submodule(self.cam_layer)

    def preprocessing(self, image_size: int) -> Preprocessing:
        """The family's reference evaluation scaled to crops of ``image_size`` pixels."""
        resize = math.floor(image_size * self.resize / self.crop)
        return Preprocessing(resize, image_size, self.mean, self.std, self.interpolation)


def _torchvision(name: str, num_classes: int, **kwargs: object) -> nn.Module:
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)


def _stride_one(*convs: nn.Conv2d) -> None:
    """Makes the convolutions that halved the grid keep it (their outputs at every position, not every other)."""
    for conv in convs:
        conv.stride = (1, 1)


def _dilate(*convs: nn.Conv2d, rate: int = 2) -> None:
    """Dilates convolutions that now run on a grid ``rate`` times finer, padded to keep their output's size."""
    for conv in convs:
        conv.dilation = (rate, rate)
        conv.padding = tuple(rate * (k - 1) // 2 for k in conv.kernel_size)


class EndPaddedConv2d(nn.Conv2d):
    """A convolution padded by ``kernel - 1`` at the end (right and bottom) only: a 2x2 stride-2 downsampling run at
    stride 1 keeps the grid's size, and its outputs at even positions are the stride-2 ones."""

    @classmethod
    def at_stride_one(cls, conv: nn.Conv2d) -> EndPaddedConv2d:
        """``conv`` at stride 1, its own parameters kept (so the random stream and any state dict are unchanged)."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, bias=conv.bias is not None, device="meta")
        new.weight, new.bias = conv.weight, conv.bias
        return new

    def forward(self, x: Tensor) -> Tensor:
        height, width = self.kernel_size
        return super().forward(nn.functional.pad(x, (0, width - 1, 0, height - 1)))


def _resnet_stages(net: nn.Module) -> list[nn.Module]:
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    return [stem, net.layer1, net.layer2, net.layer3, net.layer4]


def _resnet_stride_16(name: str, num_classes: int) -> nn.Module:
    if name not in ("resnet18", "resnet34"):  # Bottleneck blocks: torchvision dilates them itself
        return _torchvision(name, num_classes, replace_stride_with_dilation=[False, False, True])
    # torchvision's BasicBlock refuses dilation: the same surgery by hand. The strided 3x3 conv and the shortcut
    # keep the grid; every 3x3 conv after it is dilated, as the Bottleneck path dilates every conv2 after the first.
    net = _torchvision(name, num_classes)
    first, *rest = net.layer4
    _stride_one(first.conv1, first.downsample[0])
    _dilate(first.conv2, *(conv for block in rest for conv in (block.conv1, block.conv2)))
    return net


RESNET = Family(
    name="resnet",
    members=("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"),
    stages=_resnet_stages,
    stride_16=_resnet_stride_16,
    cam_layer="layer4",
)


def _convnext_stages(net: nn.Module) -> list[nn.Module]:
    # features: stem, stage1, down, stage2, down, stage3, down, stage4; a tap after each stage.
    f = net.features
    return [f[0], f[1], nn.Sequential(f[2], f[3]), nn.Sequential(f[4], f[5]), nn.Sequential(f[6], f[7])]


def _convnext_stride_16(name: str, num_classes: int) -> nn.Module:
    net = _torchvision(name, num_classes)
    norm_and_conv = net.features[6]  # the last downsampling: LayerNorm2d, then a 2x2 conv of stride 2
    norm_and_conv[1] = EndPaddedConv2d.at_stride_one(norm_and_conv[1])
    _dilate(*(block.block[0] for block in net.features[7]))  # each block's 7x7 depthwise conv
    return net


CONVNEXT = Family(
    name="convnext",
    members=("convnext_tiny", "convnext_small", "convnext_base", "convnext_large"),
    stages=_convnext_stages,
    head="classifier",  # LayerNorm2d, Flatten, Linear
    classifier="classifier.2",
    stride_16=_convnext_stride_16,
    head_norm="classifier.0",
    head_reads_map=True,
    projection_init="trunc_normal",
    cam_layer="features.7",
)


_REGNET_SIZES = ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf")


def _regnet_stages(net: nn.Module) -> list[nn.Module]:
    return [net.stem, *net.trunk_output]  # the stem (stride 2), then block1 to block4


def _regnet_stride_16(name: str, num_classes: int) -> nn.Module:
    net = _torchvision(name, num_classes)
    first, *rest = net.trunk_output.block4
    _stride_one(first.proj[0], first.f.b[0])  # the shortcut's 1x1 conv and the strided 3x3 grouped conv
    _dilate(*(block.f.b[0] for block in rest))  # every later block's 3x3 grouped conv
    return net


REGNET = Family(
    name="regnet",
    # regnet_y_400mf to regnet_y_32gf, then regnet_x_400mf to regnet_x_32gf
    members=tuple(f"regnet_{kind}_{size}" for kind in "yx" for size in _REGNET_SIZES),
    stages=_regnet_stages,
    stride_16=_regnet_stride_16,
    # The paper trains no RegNet stream: Xavier (the default), as for its BatchNorm network, ResNet.
    cam_layer="trunk_output.block4",
)

FAMILIES = (RESNET, CONVNEXT, REGNET)
BACKBONES = tuple(name for family in FAMILIES for name in family.members)


def family_of(name: str) -> Family:
    """The family of the torchvision model ``name``; ValueError for a model no family covers."""
    for family in FAMILIES:
        if name in family.members:
            return family
    raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
