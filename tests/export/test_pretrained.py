"""A torchvision classifier castream did not train, exported as it is: GAP, its own classifier and its exact class
activation maps (CAM), from random weights of each family, offline; the command's refusals; and, slow, a ResNet-50 by
its torchvision weights name at 224 px and a ConvNeXt-Tiny from a state-dict file served over /classify and /v2."""

from __future__ import annotations

import io
import logging
import urllib.error
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torchvision
from fastapi.testclient import TestClient
from PIL import Image

from export import metadata, pipeline, pretrained, to_onnx
from export.graph import export_graph
from export.pipeline import ExportOptions
from export.pretrained import ClassifierOptions
from export.sessions import make_session
from export.verify import FP32, allowed_error
from service.app import create_app
from service.contract import CLASS_MAPS, LOGITS, output_names
from tests.conftest import CONVNEXT_CLASSES
from tests.export.conftest import perturbed
from tests.runs import ExportedClassifier, random_weights, serve_and_compare
from tests.service.servicetools import make_settings, run_directly, wait_ready
from training.backbones import Backbone
from training.model import CAStreamNet, ModelConfig

FAMILIES = ["resnet18", "convnext_tiny", "regnet_y_400mf"]  # one network of each family


def _random_model(backbone: str, classes: int = 7) -> CAStreamNet:
    """A model of random weights, its 1-D parameters drawn too (as ``random_weights`` does), in eval mode."""
    torch.manual_seed(0)
    model = CAStreamNet(ModelConfig(backbone, classes))
    with torch.no_grad():
        for parameter in model.backbone.net.parameters():
            if parameter.dim() == 1:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


def _head_constant(backbone: Backbone) -> torch.Tensor:
    """The logits of a pooled vector with no spread (all zero): the head's constant term, whatever the head is (a
    plain Linear's bias; after a LayerNorm, which then gives its shift, the classifier applied to that shift)."""
    with torch.no_grad():
        return backbone.classify(torch.zeros(1, backbone.head_width))[0]


@pytest.mark.parametrize("backbone", FAMILIES)
def test_class_activation_maps_add_up_to_the_logits_in_pytorch_and_onnx_runtime(backbone: str) -> None:
    model = _random_model(backbone)
    images = torch.from_numpy(np.random.default_rng(1).normal(0, 1, (4, 3, 64, 64)).astype(np.float32))
    constant = _head_constant(model.backbone)
    with torch.no_grad():
        maps, _ = model.class_maps(images, "gap")
        logits = model(images, "gap").logits
        last = model.forward_features(images)[-1]
        # A plain Linear head: the classic CAM (Zhou et al. 2016), divided by the grid's size.
        cam = torch.einsum("kc,nchw->nkhw", model.backbone.classifier.weight, last) / last[0, 0].numel()
    assert maps.shape == (4, 7, 2, 2)
    scale = float(logits.abs().max())
    torch.testing.assert_close(maps.sum(dim=(2, 3)) + constant, logits, rtol=0, atol=1e-4 * scale)
    assert (maps - maps.mean(dim=(2, 3), keepdim=True)).abs().max() > 0.05 * maps.abs().max()  # positions differ
    if not model.backbone.affine_head().normalised:
        torch.testing.assert_close(maps, cam, rtol=0, atol=1e-5 * scale)

    session = make_session(export_graph(model, "gap", 64))
    assert [output.name for output in session.get_outputs()] == list(output_names("gap"))
    onnx_logits, onnx_maps = session.run([LOGITS, CLASS_MAPS], {"image": images.numpy()})
    allowed, _ = allowed_error(CLASS_MAPS, FP32, {LOGITS: logits.numpy()})
    np.testing.assert_allclose(onnx_maps, maps.numpy(), rtol=0, atol=allowed)
    np.testing.assert_allclose(onnx_maps.sum(axis=(2, 3)) + constant.numpy(), onnx_logits, rtol=0, atol=allowed)


def test_a_state_dict_file_loads_with_numbered_classes_and_the_familys_preprocessing(tmp_path: Path) -> None:
    path = random_weights("resnet18", tmp_path / "resnet18.pth")
    classifier = pretrained.load(ClassifierOptions(weights=str(path), backbone="resnet18"), verify_images=4)
    record = classifier.record
    assert record.finished and record.model.backbone == "resnet18" and record.model.num_classes == 1000
    assert record.classes[:2] == ("class 0", "class 1") and len(set(record.classes)) == 1000
    assert (record.preprocessing.resize, record.preprocessing.crop, record.preprocessing.interpolation) == (
        256, 224, "bilinear",
    )  # fmt: skip
    assert classifier.trained_on == "the weights 'resnet18.pth': 1000 classes (class 0, class 1, class 2 and 997 more)"
    saved = torch.load(path, weights_only=True)
    assert all(torch.equal(record.state_dict[f"backbone.net.{key}"], value) for key, value in saved.items())
    # A smaller crop scales the resize with it; each flag replaces its field.
    options = ClassifierOptions(weights=str(path), backbone="resnet18", crop=64, mean="0.5,0.5,0.5", std="0.25,0.5,1")
    prep = pretrained.load(options, verify_images=4).record.preprocessing
    assert (prep.resize, prep.crop, prep.mean, prep.std) == (73, 64, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))


def test_a_broken_classifier_export_is_refused_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    weights = random_weights("resnet18", tmp_path / "weights" / "resnet18.pth")
    monkeypatch.setattr(pipeline, "export_graph", perturbed(export_graph))
    out = tmp_path / "models" / "resnet18.onnx"
    argv = ["--backbone", "resnet18", "--weights", str(weights), "--crop", "64", "--verify-images", "8"]
    with caplog.at_level(logging.ERROR, logger="export.to_onnx"):
        assert to_onnx.main([*argv, "--out", str(out), "--cache-dir", ""]) == 1
    assert not out.parent.exists()
    message = caplog.records[-1].getMessage()
    assert "export refused, nothing written" in message and "logits differ from PyTorch's" in message


@pytest.fixture(scope="module")
def weights_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("weights")
    (folder / "three.txt").write_text("a\nb\nc\n")
    return {"resnet18": random_weights("resnet18", folder / "resnet18.pth"), "classes": folder / "three.txt"}


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--backbone", "resnet50", "--weights", "IMAGENET1K_V9"], "unknown weights 'IMAGENET1K_V9' for resnet50"),
        (["--backbone", "resnet50", "--weights", "{resnet18}"], "do not fit resnet50: size mismatch for layer1"),
        (["--backbone", "convnext_tiny", "--weights", "{resnet18}"], "has no classifier weights ('classifier.2"),
        (["--backbone", "resnet50", "--weights", "missing/resnet50.pth"], "'missing/resnet50.pth' does not exist"),
        (["--backbone", "resnet18", "--weights", "{resnet18}", "--classes", "{classes}"], "names 3 classes"),
        (["--backbone", "resnet18", "--weights", "{resnet18}", "--classes", "nope.txt"], "'nope.txt' does not exist"),
    ],
)
def test_bad_weights_are_refused_with_a_clear_message(
    weights_files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture, flags: list[str], message: str
) -> None:
    argv = [flag.format(**weights_files) for flag in flags]
    with caplog.at_level(logging.ERROR):
        assert to_onnx.main([*argv, "--out", str(tmp_path / "m.onnx")]) == 2
    assert message in caplog.text and list(tmp_path.iterdir()) == []


def test_weights_that_cannot_be_downloaded_say_where_to_put_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def offline(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with caplog.at_level(logging.ERROR):
        status = to_onnx.main(
            ["--backbone", "resnet50", "--weights", "IMAGENET1K_V2", "--out", str(tmp_path / "m.onnx")]
        )
    assert status == 2 and not (tmp_path / "m.onnx").exists()
    name = Path(torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url).name
    assert "could not download" in caplog.text and str(tmp_path / "hub" / "hub" / "checkpoints" / name) in caplog.text


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--weights", "w.pth"], "needs --backbone"),
        (["--backbone", "resnet50"], "--backbone: only with --weights"),
        (["--crop", "64", "--classes", "c.txt"], "--classes, --crop: only with --weights"),
        (["--backbone", "resnet50", "--weights", "w.pth", "--pooling", "ca"], "has no trained CA stream"),
        (["--backbone", "resnet50", "--weights", "w.pth", "--int8"], "--int8 calibrates on the model's own"),
        (["--backbone", "resnet50", "--weights", "w.pth", "--checkpoint", "c.pt"], "--checkpoint and --weights"),
        (["--backbone", "resnet50", "--weights", "w.pth", "--mean", "0.5,0.5"], "is not three numbers"),
        (["--backbone", "resnet50", "--weights", "w.pth", "--crop", "224", "--resize", "200"], "smaller than --crop"),
    ],
)
def test_options_that_do_not_go_with_weights_are_usage_errors(
    capsys: pytest.CaptureFixture, flags: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        to_onnx.parse_args(flags)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_without_weights_the_options_are_a_checkpoints_as_before() -> None:
    options = ExportOptions()
    assert (options.checkpoint, options.pooling) == ("checkpoints/default/castream.pt", "ca")
    assert ExportOptions(classifier=ClassifierOptions(weights="w.pth", backbone="resnet50")).pooling == "gap"


# The command line on real sizes (``classifiers``, tests/conftest.py)


def _images(crop: int, count: int = 3) -> list[bytes]:
    """PNG files of random pixels, of a few sizes around ``crop``."""
    rng, files = np.random.default_rng(2), []
    for index in range(count):
        pixels = rng.integers(0, 256, (crop + 16 * index, crop + 40 - 8 * index, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return files


@pytest.mark.slow  # exporting both networks: ~30 s
def test_the_weights_name_and_the_files_give_the_classes_and_preprocessing(
    classifiers: dict[str, ExportedClassifier],
) -> None:
    resnet = metadata.read(classifiers["resnet50"].model)
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    assert resnet["classes"] == weights.meta["categories"]
    assert {key: resnet["preprocessing"][key] for key in ("resize", "crop", "interpolation")} == {
        "resize": 232, "crop": 224, "interpolation": "bilinear",
    }  # fmt: skip
    assert resnet["trained_on"].startswith("torchvision's ResNet50_Weights.IMAGENET1K_V2: 1000 classes (tench, ")
    convnext = metadata.read(classifiers["convnext_tiny"].model)
    assert convnext["classes"] == list(CONVNEXT_CLASSES)
    assert {key: convnext["preprocessing"][key] for key in ("resize", "crop", "interpolation")} == {
        "resize": 110, "crop": 96, "interpolation": "bicubic",
    }  # fmt: skip
    assert convnext["trained_on"].startswith("the weights 'convnext_tiny.pth': 1000 classes (kind 0, ")
    for props, backbone in ((resnet, "resnet50"), (convnext, "convnext_tiny")):
        assert (props["backbone"], props["pooling"], props["explanation"]) == (backbone, "gap", "cam")
        assert props["model_name"] == f"castream-{backbone}-gap"
        assert "dataset" not in props and "samples" not in props and "val_top1" not in props
        assert list(props["verification"]["tolerance"]) == list(output_names("gap"))


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["resnet50", "convnext_tiny"])
def test_the_logits_are_torchvisions_own_and_the_class_maps_add_up_to_them(
    classifiers: dict[str, ExportedClassifier], backbone: str
) -> None:
    exported = classifiers[backbone]
    crop = metadata.read(exported.model)["preprocessing"]["crop"]
    images = np.random.default_rng(3).normal(0, 1, (3, 3, crop, crop)).astype(np.float32)
    outputs = make_session(onnx.load(str(exported.model))).run(None, {"image": images})
    found = dict(zip(output_names("gap"), outputs, strict=True))
    network = Backbone(backbone, 1000)
    network.net.load_state_dict(torch.load(exported.weights, weights_only=True))
    network.eval()
    with torch.no_grad():
        expected = network.net(torch.from_numpy(images)).numpy()  # torchvision's forward, GAP and head included
    allowed, _ = allowed_error(LOGITS, FP32, {LOGITS: expected})
    np.testing.assert_allclose(found[LOGITS], expected, rtol=0, atol=allowed)
    constant = _head_constant(network).numpy()
    np.testing.assert_allclose(found[CLASS_MAPS].sum(axis=(2, 3)) + constant, expected, rtol=0, atol=allowed)
    assert found[CLASS_MAPS].shape[2:] == (crop // 32, crop // 32)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["resnet50", "convnext_tiny"])
def test_classifiers_serve_exact_class_maps_over_classify_and_v2(
    classifiers: dict[str, ExportedClassifier], backbone: str
) -> None:
    path = classifiers[backbone].model
    crop = metadata.read(path)["preprocessing"]["crop"]
    info, model, grid = serve_and_compare(path, _images(crop))
    assert grid == (crop // 32, crop // 32) and info["attention"] is None and info["class_maps"] is True
    assert info["explanation"] == {"class_maps": "cam", "attention": False}

    batch = np.random.default_rng(4).normal(0, 1, (2, 3, crop, crop)).astype(np.float32)
    tensor = {"name": "image", "shape": list(batch.shape), "datatype": "FP32", "data": batch.ravel().tolist()}
    with TestClient(create_app(make_settings(path))) as client:
        wait_ready(client)
        infer = f"/v2/models/{model.name}/infer"
        body = {"inputs": [tensor], "outputs": [{"name": LOGITS}, {"name": CLASS_MAPS}]}
        answer = client.post(infer, json=body)
        refused = client.post(infer, json={"inputs": [tensor], "outputs": [{"name": "attention"}]})
    assert answer.status_code == 200, answer.text
    expected = run_directly(path, batch, (LOGITS, CLASS_MAPS))
    allowed, _ = allowed_error(CLASS_MAPS, FP32, expected)
    for output in answer.json()["outputs"]:
        values = np.array(output["data"], np.float32).reshape(output["shape"])
        np.testing.assert_allclose(values, expected[output["name"]], rtol=0, atol=allowed, err_msg=output["name"])
    assert refused.status_code == 400 and "has no attention" in refused.json()["error"]
