"""The CA block and stream: shapes, attention as a distribution, exact class maps."""

from __future__ import annotations

import math

import pytest
import torch

from training.backbones import BACKBONES
from training.model import CABlock, CAStreamNet, ModelConfig

LARGE = {"resnet101", "resnet152", "convnext_base", "convnext_large"}
LARGE |= {f"regnet_{kind}_{size}" for kind in "xy" for size in ("1_6gf", "3_2gf", "8gf", "16gf", "32gf")}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in LARGE else n for n in BACKBONES])
def test_every_backbone_gives_logits_and_a_distribution_over_positions(name: str) -> None:
    torch.manual_seed(0)
    model = CAStreamNet(ModelConfig(name, num_classes=7)).eval()
    assert len(model.stream.blocks) == 5  # stem + four stages: no stage skipped
    x = torch.randn(2, 3, 64, 96)  # non-square
    with torch.no_grad():
        logits, attention = model(x)
        gap_logits, none = model(x, pooling="gap")
    assert logits.shape == gap_logits.shape == (2, 7)
    assert none is None
    assert attention.shape == (2, 2, 3)
    assert torch.isfinite(logits).all()
    assert (attention >= 0).all()
    torch.testing.assert_close(attention.sum(dim=(1, 2)), torch.ones(2))


def test_block_is_softmax_attention_then_projection_without_residual() -> None:
    torch.manual_seed(0)
    block = CABlock(4, 3)
    features = torch.randn(2, 4, 2, 5)  # (N, C, H, W)
    token = torch.randn(2, 4)
    out, weights = block(features, token)
    flat = features.flatten(2).transpose(1, 2)  # (N, P, C)
    expected_weights = torch.softmax(flat @ token[:, :, None] / math.sqrt(4), dim=1)[..., 0]
    torch.testing.assert_close(weights, expected_weights)
    pooled = (expected_weights[..., None] * flat).sum(1)
    torch.testing.assert_close(out, pooled @ block.proj.weight.T + block.proj.bias)
    assert not [name for name, _ in block.named_parameters() if name not in ("proj.weight", "proj.bias")]


def test_token_initialised_from_normal_one_one() -> None:
    torch.manual_seed(0)
    token = CAStreamNet(ModelConfig("resnet50", 10)).stream.token.detach()
    assert token.shape == (64,)
    assert abs(token.mean().item() - 1.0) < 0.4
    assert abs(token.std().item() - 1.0) < 0.3


def test_resnet50_stream_has_the_papers_parameter_count() -> None:
    model = CAStreamNet(ModelConfig("resnet50", 1000))
    assert sum(p.numel() for p in model.stream.parameters()) == 6_969_152
    assert model.backbone.widths == (64, 256, 512, 1024, 2048)


@pytest.mark.parametrize("name", ["resnet18", "convnext_tiny", "regnet_y_400mf"])
def test_class_maps_sum_exactly_to_the_logits(name: str) -> None:
    torch.manual_seed(0)
    model = CAStreamNet(ModelConfig(name, num_classes=5)).eval()
    x = torch.randn(3, 3, 96, 64)
    with torch.no_grad():
        maps, reconstructed = model.class_maps(x)
        logits, attention = model(x)
    assert maps.shape == (3, 5, *attention.shape[1:])
    torch.testing.assert_close(reconstructed, logits, rtol=1e-4, atol=1e-4)
    # Changing the constant-free part changes the logits by exactly the map's change: maps are not a
    # rescaled copy of the attention but class-specific.
    assert not torch.allclose(maps[:, 0], maps[:, 1])


def test_unknown_pooling_and_backbone_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'"):
        ModelConfig("vgg16")
    model = CAStreamNet(ModelConfig("resnet18", 3))
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        model(torch.randn(1, 3, 64, 64), pooling="max")


@pytest.mark.parametrize("name", ["resnet18", "convnext_tiny", "regnet_y_400mf"])
@pytest.mark.parametrize("taps", ["all", "last"])
def test_a_gap_start_stream_computes_exactly_the_gap_prediction(name: str, taps: str) -> None:
    torch.manual_seed(0)
    model = CAStreamNet(ModelConfig(name, 5, stream_taps=taps), stream_init="gap").eval()
    assert len(model.stream.blocks) == (5 if taps == "all" else 1)
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 64)
        ca, gap = model(x, "ca"), model(x, "gap")
    torch.testing.assert_close(ca.logits, gap.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ca.attention, torch.full_like(ca.attention, 1 / ca.attention[0].numel()))


def test_stream_inits_differ_where_they_should() -> None:
    torch.manual_seed(0)
    paper = CAStreamNet(ModelConfig("resnet18", 5), stream_init="paper").stream
    identity = CAStreamNet(ModelConfig("resnet18", 5), stream_init="identity").stream
    last = identity.blocks[-1].proj
    torch.testing.assert_close(last.weight, torch.eye(last.in_features))
    assert not torch.equal(paper.blocks[-1].proj.weight, torch.eye(last.in_features))
    assert identity.blocks[-2].proj.weight.abs().sum() > 0  # only the gap start zeroes the last query
    with pytest.raises(ValueError, match="equal widths"):
        CABlock(4, 3, init="identity")
    with pytest.raises(ValueError, match="unknown stream init"):
        CAStreamNet(ModelConfig("resnet18", 5), stream_init="orthogonal")
    with pytest.raises(ValueError, match="stream_taps"):
        ModelConfig("resnet18", 5, stream_taps="middle")


def test_class_maps_add_up_to_the_logits_when_the_stream_reads_the_last_stage_only() -> None:
    torch.manual_seed(0)
    model = CAStreamNet(ModelConfig("resnet18", 5, stream_taps="last")).eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 64)
        maps, logits = model.class_maps(x)
        torch.testing.assert_close(logits, model(x).logits, rtol=1e-4, atol=1e-4)
    assert maps.shape == (2, 5, 2, 2)
