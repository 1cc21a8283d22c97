"""The recipe ablation: every recipe trains on the same cached taps and is scored on the selection split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from interpret.ablation import GRID, format_table, perfect_pointing, run


def test_a_perfect_map_points_at_every_object_that_covers_its_best_cell() -> None:
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = True  # fills the top-left cell of a 2x2 grid: its centre is on the object
    masks[1, 3:5, 3:5] = True  # a small object at the centre: the four cells tie, the first one's centre misses
    assert perfect_pointing(masks, (2, 2)) == 50.0
    assert perfect_pointing(masks, (8, 8)) == 100.0


def test_recipes_are_trained_on_one_frozen_backbone_and_scored(tiny_checkpoint: Path, tmp_path: Path) -> None:
    report = run(
        str(tiny_checkpoint), ["paper", "gap-start"], epochs=0, train_count=32, selection_count=32, cache=tmp_path
    )
    rows = {row["recipe"]: row for row in report["rows"]}
    assert set(rows) == {"paper", "gap-start"}
    reference = report["references"]["64"]
    assert reference["grid"] == "2x2" and 0 <= reference["gradcam_gap_pointing"] <= 100
    # Untrained, the gap start is the GAP model itself: uniform attention, so it points nowhere.
    assert rows["gap-start"]["pointing"] == 0.0
    for row in rows.values():
        assert 0 <= row["top1"] <= 100 and 0 <= row["mass"] <= 100 and row["seconds"] >= 0
    table = format_table(report)
    assert "| gap-start | 64 px | 2x2 |" in table and "perfect map" in table


def test_unknown_recipes_are_refused(tiny_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="unknown recipes"):
        run(str(tiny_checkpoint), ["sgd-forever"])
    assert "paper" in GRID and "gap-start" in GRID
