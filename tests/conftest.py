"""Fixtures shared by every test package: a tiny trained run that the later stages start from."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.runs import SHIPPED, ExportedClassifier, export_command, fit_tiny, random_weights

# The ConvNeXt-Tiny classifier's flags beside its weights and classes (``classifiers``), and its class names.
CONVNEXT_FLAGS = ("--crop", "96", "--resize", "110", "--interpolation", "bicubic")
CONVNEXT_CLASSES = tuple(f"kind {index}" for index in range(1000))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-18 run on 64 px synthetic images, one baseline and one stream epoch (seconds on a CPU).

    Returns the run folder; its checkpoint is ``castream.pt``. The paper's start: decisive attention and logits
    after a few steps. The default start (exactly GAP, uniform attention) leaves so short a run's maps near ties,
    where int8 agreement measures nothing.
    """
    out = tmp_path_factory.mktemp("tiny-run")
    fit_tiny(out, synthetic_train=256, synthetic_val=64)
    return out


@pytest.fixture(scope="session")
def shipped_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped default model, exported by the command line as `make demo` does."""
    return export_command(SHIPPED, tmp_path_factory.mktemp("shipped") / "castream.onnx")


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run: Path) -> Path:
    return tiny_run / "castream.pt"


@pytest.fixture(scope="session")
def classifiers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ExportedClassifier]:
    """A torchvision ResNet-50 and ConvNeXt-Tiny with random weights, exported as they are (GAP, class activation
    maps) by the command line; by backbone.

    ResNet-50 by its torchvision weights name (IMAGENET1K_V2), found in a torch hub cache made here (``TORCH_HOME``,
    where torchvision looks before downloading), at the weights' own preprocessing (224 px); ConvNeXt-Tiny from a
    state-dict file, with a file of class names and ``CONVNEXT_FLAGS``.
    """
    import torchvision

    folder = tmp_path_factory.mktemp("classifiers")
    hub = folder / "hub"
    url = torchvision.models.get_model_weights("resnet50")["IMAGENET1K_V2"].url
    weights = {
        "resnet50": random_weights("resnet50", hub / "hub" / "checkpoints" / Path(url).name),
        "convnext_tiny": random_weights("convnext_tiny", folder / "convnext_tiny.pth"),
    }
    names = folder / "classes.txt"
    names.write_text("".join(f"{name}\n" for name in CONVNEXT_CLASSES))
    flags = {
        "resnet50": ("--weights", "IMAGENET1K_V2"),
        "convnext_tiny": ("--weights", str(weights["convnext_tiny"]), "--classes", str(names), *CONVNEXT_FLAGS),
    }
    env = {"TORCH_HOME": str(hub)}
    return {
        backbone: ExportedClassifier(
            export_command(None, folder / f"{backbone}.onnx", "--backbone", backbone, *given, env=env),
            weights[backbone],
        )
        for backbone, given in flags.items()
    }
