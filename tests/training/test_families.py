"""Backbone families: each adapter names the torchvision network's own modules, and its affine head is the head."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from training import weights
from training.backbones import BACKBONES, Backbone
from training.families import FAMILIES, Family, family_of


def _smallest(family: Family) -> Backbone:
    torch.manual_seed(0)
    return Backbone(family.members[0], num_classes=7).eval()


def test_every_backbone_has_exactly_one_family() -> None:
    assert sorted(BACKBONES) == sorted(name for family in FAMILIES for name in family.members)
    assert len(set(BACKBONES)) == len(BACKBONES)
    assert all(name in family_of(name).members for name in BACKBONES)
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'; expected one of resnet18"):
        family_of("vgg16")


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
def test_the_taps_and_the_head_are_the_networks_own_path(family: Family) -> None:
    backbone = _smallest(family)
    seen: list[torch.Tensor] = []
    hook = backbone.cam_layer.register_forward_hook(lambda module, inputs, output: seen.append(output))
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        taps = backbone.taps(x)
        expected = backbone.net(x)
        pooled = taps[-1].mean(dim=(2, 3))
        logits = backbone.classify(pooled)
    hook.remove()
    assert len(taps) == 5 and [t.shape[1] for t in taps] == list(backbone.widths)  # the stem and four stages
    assert taps[-1].shape[-2:] == (2, 3)  # the last stage at 1/32 of the input
    # The stages run in turn, then GAP and the head, give torchvision's own logits: no module is skipped.
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    # CAM-style methods hook the last stage: its output is the last tap, in the taps' pass and in the network's.
    assert len(seen) == 2 and torch.equal(seen[0], taps[-1])
    state = backbone.net.state_dict()
    assert state[backbone.classifier_prefix + "weight"].shape == (7, backbone.head_width)
    assert backbone.classifier is backbone.head[-1] and backbone.head_width == backbone.widths[-1]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
def test_the_affine_head_computes_the_head_and_folds_a_projection_before_it(family: Family) -> None:
    backbone = _smallest(family)
    with torch.no_grad():
        for parameter in backbone.head.parameters():  # a LayerNorm's scale and shift too (torchvision: 1 and 0)
            parameter.normal_()
    pooled = torch.randn(4, backbone.head_width) * 3 + 1
    head = backbone.affine_head()
    with torch.no_grad():
        expected = backbone.classify(pooled)
        got = head.scale(pooled) * head.evidence(pooled) + head.constant
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert head.normalised == (family.head_norm is not None)
    # An affine map before the head (the stream's last projection) folds into one matrix and one vector.
    head64 = backbone.affine_head(torch.float64)
    projection = nn.Linear(5, backbone.head_width).double()
    features = torch.randn(3, 5, dtype=torch.float64)
    matrix, vector = head64.fold(projection.weight, projection.bias)
    with torch.no_grad():
        torch.testing.assert_close(features @ matrix.T + vector, head64.evidence(projection(features)))


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
def test_without_weights_the_family_gives_its_reference_preprocessing_at_the_crop(family: Family) -> None:
    assert (family.preprocessing(224).resize, family.preprocessing(224).crop) == (family.resize, family.crop)
    prep = family.preprocessing(112)
    assert prep.crop == 112 and prep.resize == family.resize * 112 // family.crop
    assert (prep.mean, prep.std, prep.interpolation) == (family.mean, family.std, family.interpolation)


def test_a_state_dict_file_needs_its_familys_classifier(tmp_path: Path) -> None:
    foreign = tmp_path / "other.pth"
    torch.save({"classifier.2.weight": torch.zeros(3, 4), "classifier.2.bias": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match=r"no classifier weights \('fc.weight'\); expected a torchvision resnet18"):
        weights.resolve(str(foreign), "resnet18")


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
def test_a_state_dict_file_of_each_family_gives_its_class_count(family: Family, tmp_path: Path) -> None:
    path = tmp_path / "net.pth"
    torch.save(_smallest(family).net.state_dict(), path)
    loaded = weights.resolve(str(path), family.members[0])
    assert loaded.kind == "file" and loaded.num_classes == 7
