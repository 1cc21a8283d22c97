"""The decode-parity section: its image makers and its record, on the tiny model."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks import decoding
from benchmarks.decoding import decode_parity, parities, parity, photo_jpegs, synthetic_jpegs
from service.imaging import DECODE_MARGIN
from service.model import load_model


def test_photo_like_images_are_2_to_12_megapixel_jpegs_some_turned_by_exif() -> None:
    files = list(photo_jpegs(6))
    images = [Image.open(io.BytesIO(data)) for data in files]
    assert all(image.format == "JPEG" and 2e6 <= image.width * image.height <= 12e6 for image in images)
    assert [image.getexif().get(0x0112) for image in images] == [None, None, 6, None, None, 6]
    assert len({image.size for image in images}) == 6


def test_the_images_are_the_same_however_many_threads_make_them(monkeypatch) -> None:
    made = [list(photo_jpegs(3)), list(synthetic_jpegs(2))]
    monkeypatch.setattr(decoding, "usable_cores", lambda: 1)
    assert [list(photo_jpegs(3)), list(synthetic_jpegs(2))] == made


def test_synthetic_images_are_large_square_jpegs() -> None:
    images = [Image.open(io.BytesIO(data)) for data in synthetic_jpegs(2)]
    assert all(image.width == image.height and image.width**2 >= 2e6 for image in images)


def test_an_image_against_itself_agrees_fully(tiny_model: Path) -> None:
    # A file smaller than the margin is not reduced: both decodes are the same pixels.
    small = io.BytesIO()
    Image.fromarray(np.full((40, 48, 3), 200, np.uint8)).save(small, format="PNG")
    same = parity(load_model(tiny_model, ["cpu"]), [small.getvalue()] * 2, DECODE_MARGIN)
    assert same.top1_agreement == 1.0 and same.max_logit_diff == 0.0


def test_margins_measured_together_match_each_measured_alone(tiny_model: Path) -> None:
    # The full decode is made once for every margin: the figures are those of a run per margin.
    model, files = load_model(tiny_model, ["cpu"]), list(photo_jpegs(3))
    together = parities(model, files, (1.0, 3.0))
    for margin, measured in together.items():
        alone = parity(model, files, margin)
        figures = {k: v for k, v in measured.__dict__.items() if not k.endswith("_ms")}
        assert figures == {k: v for k, v in alone.__dict__.items() if not k.endswith("_ms")}
    assert together[1.0].max_logit_diff > 0  # a reduction that shows, so the comparison says something


def test_the_record_holds_every_set_and_margin(tiny_model: Path) -> None:
    record = decode_parity(tiny_model, synthetic=2, photos=2, margins=(1.0, 3.0))
    assert record["margin"] == DECODE_MARGIN and set(record["sets"]) == {"synthetic", "photos"}
    for by_margin in record["sets"].values():
        assert by_margin["mib"] > 0 and set(by_margin) == {"mib", "1", "3"}
        for row in (by_margin["1"], by_margin["3"]):
            assert row["images"] == 2 and 0.0 <= row["top1_agreement"] <= 1.0
            assert 0 <= row["near_ties"] <= 2 and (row["near_ties"] == 2 or 0.0 <= row["decided_agreement"] <= 1.0)
            assert -1.0 <= row["min_attention_corr"] <= 1.0  # a CA model: a correlation, not NaN
            assert row["full_ms"] > 0 and row["reduced_ms"] > 0
