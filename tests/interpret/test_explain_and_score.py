"""explain_and_score on a tiny random model: the per-image results it has always given, and a progress bar
whose total is every backbone pass it makes.

The reference file holds the results of every method on synthetic images: the cheap methods on nine images
(two groups of ``run.GROUP``, the picture's rows cut across them), Score-CAM (hundreds of passes per image) on
two small ones. A change to how the images are grouped, explained or scored shows up as a changed number.
Regenerate it only when the results are meant to change:
``.venv/bin/python -m tests.interpret.test_explain_and_score``.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from interpret import run
from tests.interpret.test_protocol import synthetic_images
from training import synthetic
from training.model import CAStreamNet, ModelConfig

REFERENCE = Path(__file__).with_name("explain_and_score_reference.json")
PIXELS_PER_STEP = 1024
CASES = {  # name: methods, images, image size
    "grouped": (("gradcam", "gradcam++", "attention", "classmap"), 9, 64),
    "scorecam": (("scorecam",), 2, 40),  # 2 x 2 features: some channels are flat on an image and skipped
}
TOLERANCE = 1e-5
# Insertion and deletion perturb pixels in saliency order, and a random model's maps hold near-ties whose order the
# CPU's kernels decide (AVX2 against AVX-512 moved these curves' areas by up to 0.012): the areas are held to 0.03,
# everything else (maps, energy, predictions, the settings) to TOLERANCE.
CURVE_TOLERANCE = 0.03


def evaluate_tiny_model(case: str) -> tuple[run.Results, list[int], str]:
    """One case on a random ResNet-18; returns the results, the backbone's batch sizes and the bar's output."""
    methods, count, size = CASES[case]
    torch.manual_seed(0)
    model = CAStreamNet(ModelConfig("resnet18", num_classes=len(synthetic.CLASSES))).eval()
    with torch.no_grad():
        model.backbone.classifier.weight.mul_(5)  # sharper outputs: the scores move between images
    passes: list[int] = []
    forward_features = model.forward_features

    def counted(images: torch.Tensor) -> list[torch.Tensor]:
        passes.append(len(images))
        return forward_features(images)

    model.forward_features = counted  # the real backbone, counted
    samples = synthetic_images(count, size, seed=5)
    options = run.EvalOptions(
        methods=methods, pixels_per_step=PIXELS_PER_STEP, batch_size=16, grid_images=count, progress=True
    )
    bar = io.StringIO()
    with contextlib.redirect_stderr(bar):
        results = run.explain_and_score(model, samples, options, torch.device("cpu"))
    return results, passes, bar.getvalue()


def summary(results: run.Results) -> dict[str, Any]:
    """The results as JSON: every per-image score, and each grid map by its mean and spread."""
    return {
        "scores": {
            f"{method}/{pooling}": {metric: values.tolist() for metric, values in by_metric.items()}
            for (method, pooling), by_metric in results.scores.items()
        },
        "correct": {pooling: values.tolist() for pooling, values in results.correct.items()},
        "predictions": {pooling: values.tolist() for pooling, values in results.predictions.items()},
        "grid": {
            f"{method}/{pooling}": {
                "shape": list(maps.shape),
                "mean": maps.double().mean(dim=(1, 2)).tolist(),
                "std": maps.double().std(dim=(1, 2)).tolist(),
            }
            for (method, pooling), maps in results.grid.items()
        },
        "settings": {name: value for name, value in results.settings.items() if name != "seconds"},
    }


@pytest.fixture(scope="module", params=list(CASES))
def evaluated(request: pytest.FixtureRequest) -> tuple[str, run.Results, list[int], str]:
    return request.param, *evaluate_tiny_model(request.param)


def assert_close(got: Any, expected: Any, where: str = "") -> None:
    if isinstance(expected, dict):
        assert set(got) == set(expected), where
        for name in expected:
            assert_close(got[name], expected[name], f"{where}/{name}")
    elif isinstance(expected, list) and expected and isinstance(expected[0], float):
        tolerance = CURVE_TOLERANCE if where.endswith(("/insertion", "/deletion")) else TOLERANCE
        assert got == pytest.approx(expected, abs=tolerance), where
    else:
        assert got == expected, where


def test_results_are_the_recorded_ones(evaluated: tuple[str, run.Results, list[int], str]) -> None:
    case, results, _, _ = evaluated
    expected = json.loads(REFERENCE.read_text())[case]
    got = json.loads(json.dumps(summary(results)))  # tuples as lists, as in the file
    assert_close(got, expected)
    # The case is not a trivial one: the scores differ between images.
    _, count, size = CASES[case]
    for by_metric in got["scores"].values():
        assert len(set(by_metric["insertion"])) == count
    assert all(grid["shape"] == [count, size, size] for grid in got["grid"].values())


def test_the_progress_bar_counts_every_backbone_pass_and_ends_full(
    evaluated: tuple[str, run.Results, list[int], str],
) -> None:
    case, results, passes, bar = evaluated
    done, total = map(int, re.findall(r"(\d+)/(\d+) \[", bar)[-1])
    assert done == total == sum(passes)
    methods, count, size = CASES[case]
    per_image = 1 + len(results.scores) * (1 + 2 * results.settings["steps"])  # the image, then each map's scores
    if "scorecam" in methods:
        channels = 512  # ResNet-18's last stage; Score-CAM skips the channels that are flat on an image
        assert count * per_image < total < count * (per_image + channels)
    else:
        assert total == count * per_image


if __name__ == "__main__":
    reference = {case: summary(evaluate_tiny_model(case)[0]) for case in CASES}
    REFERENCE.write_text(json.dumps(reference, indent=1) + "\n")
