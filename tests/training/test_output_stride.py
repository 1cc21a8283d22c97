"""Output stride 16: each family's last stage keeps the previous stage's resolution, dilated, with the same weights."""

from __future__ import annotations

import pytest
import torch

from tests.training.test_model import LARGE
from training.backbones import BACKBONES, Backbone
from training.fit import parse_args
from training.model import CAStreamNet, ModelConfig
from training.pipeline import FitOptions

# One member per family and per ResNet block type: BasicBlock (by hand) and Bottleneck (torchvision's dilation).
NAMES = ("resnet18", "resnet50", "convnext_tiny", "regnet_y_400mf")


def _pair(name: str, dtype: torch.dtype = torch.float32) -> tuple[Backbone, Backbone]:
    """The backbone at stride 32 and at stride 16, from the same seed (the same weights)."""
    torch.manual_seed(0)
    coarse = Backbone(name, num_classes=7).eval().to(dtype)
    torch.manual_seed(0)
    fine = Backbone(name, num_classes=7, output_stride=16).eval().to(dtype)
    return coarse, fine


@pytest.mark.parametrize("name", NAMES)
def test_the_last_tap_has_twice_the_grid_with_the_same_widths_and_parameters(name: str) -> None:
    coarse, fine = _pair(name)
    assert (coarse.output_stride, fine.output_stride) == (32, 16)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        coarse_taps, fine_taps = coarse.taps(x), fine.taps(x)
    assert coarse_taps[-1].shape[-2:] == (2, 3) and fine_taps[-1].shape[-2:] == (4, 6)  # 1/32, then 1/16
    assert [t.shape for t in coarse_taps[:-1]] == [t.shape for t in fine_taps[:-1]]  # earlier taps unchanged
    assert fine.widths == coarse.widths == tuple(t.shape[1] for t in fine_taps)
    assert fine.head_width == coarse.head_width
    # The same parameter names and shapes: each network's state dict loads into the other, strictly.
    coarse_state, fine_state = coarse.net.state_dict(), fine.net.state_dict()
    assert {k: v.shape for k, v in coarse_state.items()} == {k: v.shape for k, v in fine_state.items()}
    fine.net.load_state_dict(coarse_state)
    coarse.net.load_state_dict(fine_state)
    # The hook of CAM-style methods still sees the last tap.
    seen: list[torch.Tensor] = []
    hook = fine.cam_layer.register_forward_hook(lambda module, inputs, output: seen.append(output))
    with torch.no_grad():
        fine.taps(x)
    hook.remove()
    assert seen[0].shape[-2:] == (4, 6)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in LARGE else n for n in BACKBONES])
def test_every_backbone_builds_at_stride_16_with_its_parameters(name: str) -> None:
    coarse, fine = _pair(name)
    assert {k: v.shape for k, v in coarse.net.state_dict().items()} == {
        k: v.shape for k, v in fine.net.state_dict().items()
    }
    with torch.no_grad():
        taps = fine.taps(torch.zeros(1, 3, 64, 64))
    assert taps[-1].shape[-2:] == (4, 4) and taps[-2].shape[-2:] == (4, 4)  # the last stage keeps stage 3's grid
    assert fine.widths == coarse.widths


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "convnext_tiny", "regnet_x_400mf"])
def test_every_other_position_of_the_finer_map_is_the_coarser_map(name: str) -> None:
    # Only strides, dilations and paddings changed: the stride-16 network computes the stride-32 one's outputs at
    # even positions (the "a trous" identity), exactly but for float64 rounding. RegNetY is left out: its
    # squeeze-and-excitation averages over the whole finer grid, which the identity does not cover.
    coarse, fine = _pair(name, torch.float64)
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        expected, got = coarse.taps(x)[-1], fine.taps(x)[-1]
    torch.testing.assert_close(got[..., ::2, ::2], expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_class_maps_at_stride_16_sum_exactly_to_the_logits(name: str) -> None:
    torch.manual_seed(0)
    model = CAStreamNet(ModelConfig(name, num_classes=7, output_stride=16)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, attention = model(x)
        maps, map_logits = model.class_maps(x)
    assert attention.shape == (2, 4, 4)  # 64 px: 4 x 4 instead of 2 x 2
    torch.testing.assert_close(attention.sum(dim=(1, 2)), torch.ones(2))
    assert maps.shape == (2, 7, 4, 4)
    torch.testing.assert_close(map_logits, logits, rtol=1e-5, atol=1e-5)
    constant = model.backbone.affine_head().constant
    torch.testing.assert_close(maps.sum(dim=(2, 3)) + constant, logits, rtol=1e-5, atol=1e-5)


def test_a_stride_16_model_loads_a_stride_32_models_weights() -> None:
    torch.manual_seed(0)
    coarse = CAStreamNet(ModelConfig("resnet18", 5)).eval()
    fine = CAStreamNet(ModelConfig("resnet18", 5, output_stride=16)).eval()
    fine.load_state_dict(coarse.state_dict())  # strict: pretrained weights and checkpoints fit either
    assert all(torch.equal(fine.state_dict()[k], v) for k, v in coarse.state_dict().items())


def test_an_unsupported_output_stride_is_refused_with_the_choices(capsys) -> None:
    with pytest.raises(ValueError, match=r"output stride 8 is not supported; expected 32 .* or 16"):
        ModelConfig("resnet18", 5, output_stride=8)
    with pytest.raises(ValueError, match="output stride 64 is not supported"):
        Backbone("convnext_tiny", output_stride=64)
    with pytest.raises(ValueError, match="output stride 8 is not supported"):
        FitOptions(output_stride=8)
    assert parse_args([]).output_stride == 32
    assert parse_args(["--output-stride", "16"]).output_stride == 16
    with pytest.raises(SystemExit):
        parse_args(["--output-stride", "8"])
    assert "output stride 8 is not supported; expected 32" in capsys.readouterr().err
