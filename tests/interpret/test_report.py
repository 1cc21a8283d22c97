"""The evaluation's report: the paper's table and the CA-against-GAP comparison, on scores made by hand."""

from __future__ import annotations

import pytest
import torch

from interpret import report, run


def test_comparison_names_the_winner_of_each_metric_by_hand() -> None:
    def scores(ad: list[float], insertion: list[float]) -> dict[str, torch.Tensor]:
        return {"ad": torch.tensor(ad), "insertion": torch.tensor(insertion)}

    results = run.Results(
        scores={("gradcam", "gap"): scores([0.5, 0.3], [0.6, 0.6]), ("gradcam", "ca"): scores([0.2, 0.2], [0.5, 0.7])},
        correct={"gap": torch.tensor([True, False]), "ca": torch.tensor([True, True])},
        grid={},
        predictions={},
        settings={
            "images": 2,
            "image_size": [8, 8],
            **run.EvalOptions(pixels_per_step=2).faithfulness_settings(8, 8),
        },
    )
    assert results.mean(("gradcam", "gap"), "ad") == pytest.approx(40.0)
    assert results.accuracy("ca") == 100.0
    # AD: CA - GAP = -30 and -10 points: mean -20, paired standard error 10 / sqrt(2). Lower AD is better.
    diff, error = results.paired_difference("gradcam", "ad")
    assert (diff, error) == pytest.approx((-20.0, 10.0))
    line = report.comparison(results)[0]
    assert line.startswith("Grad-CAM: AD: CA beats GAP (-20.00 ± 10.00); insertion: tie (+0.00 ± 10.00)")
    table = report.markdown(results)
    assert "| Grad-CAM | GAP | 40.00 | 60.00 |" in table
    assert "| Grad-CAM | CA | 20.00 | 60.00 |" in table
    # The table says which protocol made it, and what was changed from it.
    assert "Protocol `ca-stream (modified)` for insertion/deletion: 2 pixels per step (32 steps)" in table
    assert "gkern(5, 5)" in table and "changed from the protocol: pixels_per_step" in table
    assert "align_corners=True" in table
    csv_rows = report.table_csv(results).splitlines()
    assert csv_rows[0].endswith(",protocol,blur_kernel,blur_sigma,pixels_per_step,steps")
    assert csv_rows[1].endswith(",ca-stream (modified),5,5.0,2,32")


def test_localisation_by_class_scores_each_class_on_its_own_images() -> None:
    # Four images: two rings (labels 0), two disks (label 1), a class without images (2).
    hits = {"attention": [0.0, 0.0, 1.0, 1.0], "gradcam": [1.0, 0.0, 1.0, 1.0]}
    energy = {"attention": [0.4, 0.2, 0.9, 0.7], "gradcam": [0.3, 0.1, 0.5, 0.5]}
    results = run.Results(
        scores={
            (m, p): {"ad": torch.zeros(4), "pointing": torch.tensor(hits[m]), "energy": torch.tensor(energy[m])}
            for m, p in (("gradcam", "gap"), ("attention", "ca"))
        },
        correct={"gap": torch.ones(4, dtype=torch.bool), "ca": torch.ones(4, dtype=torch.bool)},
        grid={},
        predictions={},
        settings={"images": 4, "image_size": [8, 8], **run.EvalOptions(pixels_per_step=2).faithfulness_settings(8, 8)},
    )
    table = report.by_class(results, torch.tensor([0, 0, 1, 1]), ("ring", "disk", "cross"))
    assert list(table) == ["ring", "disk"]
    assert table["ring"] == {
        "images": 2,
        "gradcam/gap": {"pointing": 50.0, "energy": 20.0},
        "attention/ca": {"pointing": 0.0, "energy": 30.0},
    }
    assert table["disk"]["attention/ca"] == {"pointing": 100.0, "energy": 80.0}
    text = report.markdown(results, classes=table)
    section = text.split("## Localisation by class")[1]
    # The raw attention's weakest class first; pointing / energy per method in the main table's order.
    assert "| class | images | GAP Grad-CAM | CA Raw attention |" in section
    assert section.index("| ring | 2 | 50.0 / 20.0 | 0.0 / 30.0 |") < section.index("| disk | 2 | 100.0 / 50.0 |")
    # Without masks (no localisation scores) there is no section, and a labels count that does not match the
    # scores (another sample) gives none rather than a wrong one.
    plain = run.Results(
        scores={key: {"ad": v["ad"]} for key, v in results.scores.items()},
        correct=results.correct,
        grid={},
        predictions={},
        settings=results.settings,
    )
    assert report.by_class(plain, torch.tensor([0, 0, 1, 1]), ("ring", "disk")) == {}
    assert report.by_class(results, torch.tensor([0, 1]), ("ring", "disk")) == {}
    assert "Localisation by class" not in report.markdown(plain)
