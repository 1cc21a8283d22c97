"""The embedded synthetic data set: deterministic, balanced, every image with its object mask."""

from __future__ import annotations

import numpy as np
import pytest

from training.synthetic import CLASSES, SyntheticSpec, generate


def test_same_seed_same_pixels_other_seed_other_pixels() -> None:
    a = generate(SyntheticSpec(size=48, count=30, seed=3))
    b = generate(SyntheticSpec(size=48, count=30, seed=3))
    c = generate(SyntheticSpec(size=48, count=30, seed=4))
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    assert np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)


def test_classes_are_balanced_and_masks_hold_one_visible_object() -> None:
    split = generate(SyntheticSpec(size=64, count=200, seed=0))
    assert len(CLASSES) >= 10
    assert split.images.shape == (200, 64, 64, 3) and split.images.dtype == np.uint8
    assert np.bincount(split.labels, minlength=len(CLASSES)).tolist() == [20] * len(CLASSES)
    area = split.masks.mean(axis=(1, 2))
    assert (area > 0.01).all() and (area < 0.5).all()
    # The object is drawn last, in one colour: every mask pixel has its image's object colour.
    for image, mask in zip(split.images[:20], split.masks[:20], strict=True):
        colours = np.unique(image[mask], axis=0)
        assert len(colours) == 1


def test_objects_vary_in_position_and_scale() -> None:
    split = generate(SyntheticSpec(size=64, count=100, seed=1))
    ys, xs = zip(*(np.argwhere(m).mean(axis=0) for m in split.masks), strict=True)
    assert np.std(xs) > 5 and np.std(ys) > 5
    assert np.std(split.masks.mean(axis=(1, 2))) > 0.01


def test_shapes_differ_between_classes() -> None:
    split = generate(SyntheticSpec(size=64, count=len(CLASSES) * 4, seed=2, min_scale=0.3, max_scale=0.3))
    areas = [split.masks[split.labels == k].mean() for k in range(len(CLASSES))]
    # Fill ratios of a fixed-scale shape identify most classes already.
    assert len({round(a, 2) for a in areas}) >= len(CLASSES) - 3


@pytest.mark.parametrize("spec", [SyntheticSpec(size=8), SyntheticSpec(count=0)])
def test_bad_specs_are_refused(spec: SyntheticSpec) -> None:
    with pytest.raises(ValueError, match="got"):
        generate(spec)
