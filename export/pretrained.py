"""A classifier castream did not train, exported as it is: torchvision's network, global average pooling and its own
classifier, explained by its exact class activation maps (CAM), without training anything.

python -m export.to_onnx --backbone resnet50 --weights IMAGENET1K_V2 --out models/resnet50.onnx
python -m export.to_onnx --backbone convnext_tiny --weights convnext.pth --classes classes.txt --out models/cnx.onnx

The weights are read by ``training.weights``: a torchvision weights name (from torch's hub cache, downloaded there
where it is missing) or a local state-dict file of the torchvision network. The class names are the weights'
categories for a torchvision name, else ``--classes`` (one a line), else numbers. The preprocessing is the weights'
own transforms, else the family's reference evaluation (ImageNet statistics), each field changed by its flag.

The classifier becomes an in-memory finished checkpoint record, so the export traces, checks and writes it as any
other. No data set comes with it: its parity with PyTorch is checked on castream's synthetic images rendered at its
crop, since the check compares two programs on the same inputs, for which any image serves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from service.contract import INTERPOLATIONS
from training import weights
from training.checkpoint import Checkpoint
from training.data import DataConfig, Preprocessing, preprocessing_for
from training.families import BACKBONES, family_of
from training.model import CAStreamNet, ModelConfig
from training.options import option

log = logging.getLogger(__name__)

SHOWN_CLASSES = 3  # class names quoted in the sentence of what the classifier knows


@dataclass(frozen=True)
class ClassifierOptions:
    """A torchvision classifier to export instead of a castream checkpoint (``--weights``)."""

    weights: str | None = option(
        None,
        "export a classifier castream did not train, with GAP and class activation maps: a torchvision weights name "
        "(IMAGENET1K_V2...) or a state-dict file of the --backbone network",
    )
    backbone: str | None = option(
        None, "the torchvision network of --weights (resnet50, convnext_tiny...)", choices=BACKBONES, metavar="NAME"
    )
    classes: str | None = option(
        None, "--weights: file of class names, one a line (default: the torchvision weights' own, else numbers)"
    )
    crop: int | None = option(None, "--weights: input size in pixels (default: the weights' own, else 224)", minimum=32)
    resize: int | None = option(
        None, "--weights: shorter side before the centre crop (default: the weights' ratio to the crop, else 256/224)"
    )
    mean: str | None = option(
        None, "--weights: per-channel mean (default: the weights' own, else ImageNet's)", metavar="R,G,B"
    )
    std: str | None = option(None, "--weights: per-channel deviation (default: as the mean)", metavar="R,G,B")
    interpolation: str | None = option(
        None, "--weights: resampling of the resize (default: the weights' own, else bilinear)", choices=INTERPOLATIONS
    )

    def __post_init__(self) -> None:
        described = {name: getattr(self, name) for name in ("backbone", "classes", "crop", "resize", "mean", "std")}
        described["interpolation"] = self.interpolation
        if self.weights is None:
            given = [f"--{name}" for name, value in described.items() if value is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only with --weights (a classifier to export as it is)")
            return
        if self.backbone is None:
            raise ValueError(f"--weights {self.weights} needs --backbone: the torchvision network the weights are for")
        family_of(self.backbone)  # a name no family covers: ValueError naming those there are
        for name in ("mean", "std"):
            if getattr(self, name) is not None:
                _channels(getattr(self, name), name)
        if self.resize is not None and self.crop is not None and self.resize < self.crop:
            raise ValueError(f"--resize {self.resize} is smaller than --crop {self.crop}; the crop must fit inside")

    @property
    def given(self) -> bool:
        """Whether a classifier is to be exported (rather than a checkpoint)."""
        return self.weights is not None


@dataclass(frozen=True)
class Classifier:
    """A classifier as export reads it: a finished record of its network (GAP; no stream is trained, nor used) whose
    data set is castream's synthetic images at its crop, for the parity checks alone, and what it was really trained
    on, in a sentence for the model file's ``trained_on``."""

    record: Checkpoint
    trained_on: str


def load(options: ClassifierOptions, verify_images: int) -> Classifier:
    """The classifier ``options`` describe, its weights loaded and checked against the network."""
    if not options.given:
        raise ValueError("no classifier to load: pass --weights (a torchvision weights name or a state-dict file)")
    assert options.backbone is not None  # checked by the options
    initial = _weights(options.weights, options.backbone)
    config = ModelConfig(options.backbone, initial.num_classes)
    model = CAStreamNet(config)
    _load_network(model, initial, options.backbone)
    classes = class_names(options.classes, initial.num_classes, initial.classes)
    prep = preprocessing(options, initial)
    data = DataConfig(kind="synthetic", image_size=prep.crop, train_count=0, val_count=verify_images)
    record = Checkpoint(
        model=config,
        state_dict=model.state_dict(),
        classes=classes,
        preprocessing=prep,
        data=data,
        config={"weights": initial.name, "backbone": options.backbone},
    )
    torchvision = initial.kind == "torchvision"
    source = f"torchvision's {initial.name}" if torchvision else f"the weights {Path(initial.name).name!r}"
    log.info("%s for %s: %d classes, %d px crop", source, options.backbone, len(classes), prep.crop)
    return Classifier(record, f"{source}: {len(classes)} classes ({_listed(classes)})")


def _weights(spec: str, backbone: str) -> weights.InitialWeights:
    try:
        initial = weights.resolve(spec, backbone)
    except RuntimeError as error:  # the download failed: the weights are not at hand
        raise FileNotFoundError(str(error)) from error
    if initial.kind == "checkpoint":
        raise ValueError(
            f"{spec!r} is a castream checkpoint; export it with `--checkpoint {spec} --pooling gap` (class activation "
            "maps) or --pooling ca (the class maps of its trained stream)"
        )
    if initial.state_dict is None:
        raise ValueError(f"--weights {spec!r} names no weights; pass a torchvision weights name or a state-dict file")
    return initial


def _load_network(model: CAStreamNet, initial: weights.InitialWeights, backbone: str) -> None:
    """Loads the weights into torchvision's network inside ``model``; ValueError where they are another network's."""
    try:
        missing, unexpected = model.backbone.net.load_state_dict(initial.state_dict, strict=False)
    except RuntimeError as error:  # tensors of other shapes: another network of the family, or other classes
        first = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error))
        raise ValueError(f"weights {initial.name!r} do not fit {backbone}: {first}") from None
    if missing or unexpected:
        raise ValueError(
            f"weights {initial.name!r} do not fit {backbone}: missing {list(missing)[:4]}, unexpected "
            f"{list(unexpected)[:4]}; expected a state dict of torchvision's {backbone}"
        )
    model.eval()


def class_names(path: str | None, count: int, known: tuple[str, ...] | None) -> tuple[str, ...]:
    """The names of ``count`` classes: from the file at ``path`` (one a line), else ``known``, else numbered."""
    if path is None:
        if known is not None and len(known) == count:
            return known
        log.warning("no class names for the classifier's %d outputs: numbered (--classes FILE names them)", count)
        return tuple(f"class {index}" for index in range(count))
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"class-name file {path!r} does not exist; --classes expects one name a line")
    names = tuple(line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip())
    if len(names) != count:
        raise ValueError(f"{path!r} names {len(names)} classes; the classifier has {count} outputs, one name a line")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{path!r} names {repeated[:3]} more than once; each class needs a name of its own")
    return names


def preprocessing(options: ClassifierOptions, initial: weights.InitialWeights) -> Preprocessing:
    """The weights' own preprocessing (their transforms), else the family's reference evaluation, at ``--crop`` if given
    (the resize scaled with it), then each field a flag names."""
    family = family_of(options.backbone)
    crop = options.crop or (initial.transforms.crop_size[0] if initial.transforms is not None else family.crop)
    base = preprocessing_for(initial.transforms, crop, family.preprocessing(crop))
    changes: dict[str, object] = {"resize": options.resize, "interpolation": options.interpolation}
    changes |= {name: _channels(getattr(options, name), name) for name in ("mean", "std") if getattr(options, name)}
    prep = replace(base, **{name: value for name, value in changes.items() if value is not None})
    if prep.resize < prep.crop:
        raise ValueError(f"resize {prep.resize} is below the crop {prep.crop}; pass --resize {prep.crop} or more")
    return Preprocessing.from_dict(prep.to_dict())  # the contract's validation


def _channels(text: str, name: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(value) for value in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or (name == "std" and min(values) <= 0):
        bound = "positive " if name == "std" else ""
        raise ValueError(f"--{name} {text!r} is not three {bound}numbers R,G,B (such as 0.485,0.456,0.406)")
    return values


def _listed(classes: tuple[str, ...]) -> str:
    shown = ", ".join(classes[:SHOWN_CLASSES])
    return shown + (f" and {len(classes) - SHOWN_CLASSES} more" if len(classes) > SHOWN_CLASSES else "")
