"""Decoding only what the model sees, against the full decode that training saw. ``decode_parity``: on synthetic
validation images rendered large and on photo-like images of 2 to 12 megapixels, each JPEG decoded in full and
reduced (libjpeg's DCT scaling, then the model's resize) at several margins over the resize target: top-1
agreement, the largest logit difference relative to the logits' scale, the attention maps' correlation, and the
decode-and-preprocess time of each."""

from __future__ import annotations

import io
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from benchmarks.sections import Aim, Section, body, fmt, pct, table
from service.imaging import DECODE_MARGIN, decode_reduced
from service.model import OnnxModel, load_model
from service.preprocess import Preprocessor
from service.settings import usable_cores

log = logging.getLogger(__name__)

ASPECTS = ((4, 3), (3, 2), (16, 9), (1, 1))
ROTATED = 6  # the EXIF orientation of a phone held upright: stored landscape, shown portrait


def _jpeg(image: Image.Image, quality: int = 90, orientation: int | None = None) -> bytes:
    out, exif = io.BytesIO(), Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    image.save(out, format="JPEG", quality=quality, exif=exif.tobytes())
    return out.getvalue()


def _side(megapixels: float, aspect: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of about ``megapixels`` at ``aspect``."""
    height = round((megapixels * 1e6 * aspect[1] / aspect[0]) ** 0.5)
    return round(height * aspect[0] / aspect[1]), height


def _made(render: Callable[[Any], bytes], plans: Iterable[Any]) -> Iterator[bytes]:
    """``render(plan)`` of each plan, in order, on every usable core: Pillow and NumPy let go of the interpreter
    while they draw, blur and compress. Plans are drawn here, one generator in one order (the same images however
    many cores), and only a few ahead of the renders."""
    workers = max(1, usable_cores())
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Future[bytes]] = deque()
        for plan in plans:
            pending.append(pool.submit(render, plan))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def synthetic_jpegs(count: int, seed: int = 1, megapixels: tuple[float, float] = (2.0, 12.0)) -> Iterator[bytes]:
    """``count`` images of the default data set's validation kind (a seed the training split never uses), each
    generated at 2 to 12 megapixels as a square and saved as a JPEG, with its classes balanced."""
    from training.synthetic import SyntheticSpec, generate

    def render(plan: tuple[int, int]) -> bytes:
        index, side = plan
        split = generate(SyntheticSpec(size=side, count=1, seed=seed * 100_000 + index))
        return _jpeg(Image.fromarray(split.images[0]))

    rng = np.random.default_rng(seed)
    return _made(render, ((index, round(math.sqrt(rng.uniform(*megapixels) * 1e6))) for index in range(count)))


@dataclass
class _PhotoPlan:
    """Everything random about one photo-like image, drawn in order from the set's generator."""

    index: int
    size: tuple[int, int]
    light: np.ndarray  # 3 x 4 RGB, stretched over the picture
    shapes: list[tuple[tuple[float, float, float, float], tuple[int, int, int], bool]]  # box, colour, ellipse
    grain: np.ndarray  # (height, width) float32, standard normal


def _photo_plans(count: int, seed: int, megapixels: tuple[float, float]) -> Iterator[_PhotoPlan]:
    rng = np.random.default_rng(seed)
    for index in range(count):
        width, height = _side(rng.uniform(*megapixels), ASPECTS[index % len(ASPECTS)])
        light = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
        shapes = []
        for _ in range(int(rng.integers(3, 9))):
            x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
            w, h = rng.uniform(0.05, 0.4) * width, rng.uniform(0.05, 0.4) * height
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            shapes.append(((x0, y0, x0 + w, y0 + h), colour, bool(rng.random() < 0.5)))
        # Luminance grain from the same generator (Pillow's effect_noise draws from C's rand(), unseeded).
        yield _PhotoPlan(index, (width, height), light, shapes, rng.standard_normal((height, width), dtype=np.float32))


def _photo(plan: _PhotoPlan) -> bytes:
    light = Image.fromarray(plan.light).resize(plan.size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(light)
    for box, colour, ellipse in plan.shapes:
        (draw.ellipse if ellipse else draw.rectangle)(box, fill=colour)
    light = light.filter(ImageFilter.GaussianBlur(1.0))  # a lens: edges a pixel or two wide
    pixels = np.asarray(light, np.float32) + (plan.grain * 8.0)[..., None]
    picture = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    return _jpeg(picture, orientation=ROTATED if plan.index % 3 == 2 else None)


def photo_jpegs(count: int, seed: int = 2, megapixels: tuple[float, float] = (2.0, 12.0)) -> Iterator[bytes]:
    """``count`` photo-like JPEGs of 2 to 12 megapixels: smooth light, hard-edged shapes and sensor grain, in
    the aspects phones and cameras use; every third one stored landscape and turned upright by EXIF."""
    return _made(_photo, _photo_plans(count, seed, megapixels))


@dataclass
class Parity:
    """The reduced decode against the full one over a set of images."""

    images: int
    top1_agreement: float
    near_ties: int  # images whose two most likely classes, on the full decode, are within NEAR_TIE of each other
    decided_agreement: float  # top-1 agreement over the other images
    max_logit_diff: float  # the largest |logit difference| over an image's logit range, over the images
    min_attention_corr: float  # the smallest Pearson correlation of an image's two attention maps
    mean_attention_corr: float
    full_ms: float  # mean decode and preprocess time
    reduced_ms: float


# A top-1 class this close to the runner-up (in probability, on the full decode) is a near tie: any perturbation of
# the pixels as small as a different resampling path may swap the two, which says nothing of the decode.
NEAR_TIE = 0.05


def _run(model: OnnxModel, inputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    outputs = [o for start in range(0, len(inputs), 8) for o in model.run(np.stack(inputs[start : start + 8]))]
    logits = np.stack([o.logits for o in outputs])
    has_attention = outputs[0].attention is not None
    return logits, np.stack([o.attention for o in outputs]) if has_attention else None


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    scale = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / scale) if scale > 0 else float(np.array_equal(a, b))


def parity(model: OnnxModel, files: Sequence[bytes], margin: float) -> Parity:
    """Each file decoded in full and reduced to ``margin`` times the model's resize, preprocessed and run."""
    return parities(model, files, (margin,))[margin]


def parities(model: OnnxModel, files: Sequence[bytes], margins: Sequence[float]) -> dict[float, Parity]:
    """:func:`parity` at each of ``margins``; the full decode, the slow part, is made and run once for them all."""
    prepare = Preprocessor(model.info.preprocessing)
    full, full_s = [], 0.0
    for data in files:
        start = time.perf_counter()
        full.append(prepare(decode_reduced(data, 10**9).image).input)
        full_s += time.perf_counter() - start
    logits_a, attention_a = _run(model, full)
    spread = np.maximum(logits_a.max(1) - logits_a.min(1), 1e-6)
    probabilities = np.exp(logits_a - logits_a.max(1, keepdims=True))
    top2 = np.sort(probabilities / probabilities.sum(1, keepdims=True), axis=1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] >= NEAR_TIE
    results = {}
    for margin in margins:
        min_side = math.ceil(model.info.preprocessing.resize * margin)
        reduced, reduced_s = [], 0.0
        for data in files:
            start = time.perf_counter()
            part = decode_reduced(data, 10**9, min_side)
            reduced.append(prepare(part.image, size=part.size).input)
            reduced_s += time.perf_counter() - start
        logits_b, attention_b = _run(model, reduced)
        agree = logits_a.argmax(1) == logits_b.argmax(1)
        pairs = zip(attention_a, attention_b, strict=True) if attention_a is not None else ()
        corr = [_correlation(a, b) for a, b in pairs]
        results[margin] = Parity(
            images=len(files),
            top1_agreement=float(np.mean(agree)),
            near_ties=int((~decided).sum()),
            decided_agreement=float(np.mean(agree[decided])) if decided.any() else math.nan,
            max_logit_diff=float((np.abs(logits_a - logits_b).max(1) / spread).max()),
            min_attention_corr=min(corr, default=math.nan),
            mean_attention_corr=float(np.mean(corr)) if corr else math.nan,
            full_ms=full_s / len(files) * 1000,
            reduced_ms=reduced_s / len(files) * 1000,
        )
    return results


def decode_parity(
    model: Path, synthetic: int = 100, photos: int = 100, margins: Sequence[float] = (1.5, 2.0, 3.0)
) -> dict[str, Any]:
    """Parity and time of the reduced decode at each margin, on ``synthetic`` and ``photos`` images."""
    onnx = load_model(model, ["cpu"])
    sets = {"synthetic": list(synthetic_jpegs(synthetic)), "photos": list(photo_jpegs(photos))}
    rows: dict[str, dict[str, Any]] = {}
    for name, files in sets.items():
        if not files:
            continue
        megabytes = sum(map(len, files)) / len(files) / 2**20
        log.info("decode parity: %d images (%s), %.1f MiB each on average", len(files), name, megabytes)
        by_margin = parities(onnx, files, margins)
        rows[name] = {"mib": megabytes} | {f"{m:g}": by_margin[m].__dict__ for m in margins}
    return {"margin": DECODE_MARGIN, "resize": onnx.info.preprocessing.resize, "sets": rows}


def _render(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    rows = [
        [name, margin, str(p["images"]), pct(p["top1_agreement"]), str(p["near_ties"]), pct(p["decided_agreement"]),
         fmt(p["max_logit_diff"], 4),
         fmt(p["min_attention_corr"], 4), fmt(p["mean_attention_corr"], 5), fmt(p["full_ms"]), fmt(p["reduced_ms"])]
        for name, by_margin in r["sets"].items() for margin, p in by_margin.items() if margin != "mib"
    ]  # fmt: skip
    sizes = ", ".join(f"{name} {by_margin['mib']:.1f} MiB" for name, by_margin in r["sets"].items())
    return body(
        f"Each JPEG decoded in full and preprocessed (what training saw), then decoded at the smallest DCT scale "
        f"whose shorter side is at least the margin times the model's resize ({r['resize']} px), resized and "
        f"cropped from there; both run through the model. Mean file size: {sizes}. The service uses a margin of "
        f"**{r['margin']:g}**. Near ties: images whose two most likely classes on the full decode are within "
        f"{NEAR_TIE:g} in probability, which any resampling may swap; the next column is the agreement on the others. "
        "Logit difference: the largest over an image's logit range; correlation: Pearson, of the two attention maps.",
        table(
            [
                "images",
                "margin",
                "n",
                "top-1 agreement",
                "near ties",
                "agreement, the others",
                "max logit diff",
                "min attention corr",
                "mean attention corr",
                "full ms",
                "reduced ms",
            ],
            rows,
        ),  # fmt: skip
    )


def _aims(r: dict[str, Any] | None) -> list[Aim]:
    if r is None:
        return []
    chosen = {name: by_margin.get(f"{r['margin']:g}") for name, by_margin in r["sets"].items()}
    synthetic, photos = chosen.get("synthetic") or {}, chosen.get("photos") or {}
    return [
        Aim("reduced decode, synthetic images: top-1 agreement", synthetic.get("top1_agreement"), 1.0, True),
        Aim("reduced decode, photos: top-1 agreement", photos.get("top1_agreement"), 0.99, True),
        Aim("reduced decode: smallest attention correlation",
            min((p.get("min_attention_corr", math.nan) for p in (synthetic, photos)), default=None), 0.99, True),
    ]  # fmt: skip


SECTIONS = (
    Section("decode_parity", "Decoding only what the model sees: parity with the full decode", decode_parity,
            {"synthetic": 4, "photos": 4, "margins": (2.0,)}, _render, _aims),
)  # fmt: skip
