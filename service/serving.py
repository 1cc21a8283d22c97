"""The serving core: one immutable object, published by the lifecycle once the model is warm, and the one request
pipeline that every protocol goes through.

Everything a request needs is here and none of it is optional: the model, its preprocessing, the batcher
and the decode threads. Routes receive it through ``service.deps.ServingDep`` (503 until it exists), parse
what their path and query say, and hand the request to :meth:`Serving.handle` with their protocol's
:class:`Codec` (``service.codecs``). The pipeline owns the sequence: room checked before the body is read,
the body read and parsed by the codec, admission once for all of the request's images, decode, inference,
and the codec's encoding of the outputs.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from fastapi import Request, Response

from service import handoff, timings
from service.batcher import Batcher
from service.contract import CLASS_MAPS
from service.errors import ServiceError
from service.imaging import Opened, decode_opened, open_image
from service.metrics import Metrics
from service.model import ImageOutput, OnnxModel
from service.preprocess import Prepared, Preprocessor
from service.settings import PREFIX, Settings

# An image of at most this many pixels (256 x 256) is decoded on the event loop's own thread: on a 2-core Xeon its
# decode and preprocessing take 0.37 ms at 128 x 128 and 0.80 ms at 256 x 256 as JPEG (1.6 ms as PNG), while handing
# it to a decode thread and back takes about 0.28 ms (the timeline benchmark's two hops) and two thread wake-ups.
INLINE_PIXELS = 256 * 256


@dataclass
class Work:
    """A request as its codec read it: encoded image ``files`` to decode, or model ``inputs`` [3, crop, crop]."""

    files: list[tuple[str, bytes | memoryview]] = field(default_factory=list)  # (name, data), in order
    inputs: list[np.ndarray] = field(default_factory=list)
    outputs: frozenset[str] = frozenset()  # the model outputs the answer needs
    display: int = 0  # files: also keep each at this many pixels on its longer side (whole-image overlays)
    offload_encode: bool = False  # encoding is heavy (PNG overlays): done in the decode pool

    @property
    def images(self) -> int:
        return len(self.files) or len(self.inputs)


class Codec(Protocol):
    """One protocol's share of a request: its body in, its answer out."""

    async def read(self, request: Request) -> Work:
        """Read and parse the body: images or tensors and what to answer; ServiceError for anything unusable."""
        ...

    def encode(self, outputs: list[ImageOutput], prepared: list[Prepared] | None) -> Response:
        """The answer for the model's ``outputs``, one per image in order; ``prepared`` holds decoded files."""
        ...


def queue_limit(settings: Settings) -> str:
    """What bounds one serving process's queue, as a queue-full answer names it."""
    if settings.workers == 1:
        return f"{PREFIX}MAX_QUEUE={settings.max_queue}"
    return (
        f"this process takes {settings.max_queue}, its share of {PREFIX}MAX_QUEUE with {PREFIX}WORKERS="
        f"{settings.workers}"
    )


@dataclass(frozen=True, eq=False)
class Serving:
    """A warm model behind its batcher; ``decode_pool`` decodes and preprocesses off the event loop."""

    settings: Settings
    metrics: Metrics
    model: OnnxModel
    preprocessor: Preprocessor
    batcher: Batcher
    decode_pool: Executor

    async def handle(self, request: Request, codec: Codec) -> Response:
        """The one request pipeline: room, body, admission, decode, inference, encoding."""
        self.batcher.check()  # under overload, refused before the body is read; nothing is held meanwhile
        work = await codec.read(request)
        with self.batcher.admit(work.images) as ticket:  # all its images, once the body is in: 503 if room went
            prepared = await self.prepare(work.files, work.display) if work.files else None
            inputs = work.inputs if prepared is None else [p.input for p in prepared]
            outputs = await self.batcher.submit(inputs, work.outputs, ticket)
        # PNG encoding is worth a thread hop; top-k, numeric grids and tensors are not.
        with timings.stage("encode"):
            if work.offload_encode:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self.decode_pool, codec.encode, outputs, prepared)
            return codec.encode(outputs, prepared)

    def require_class_maps(self) -> None:
        """Raise 422 ``no_class_maps`` unless the model can give class maps."""
        if not self.model.has_class_maps:
            info = self.model.info
            when = "before GAP models had class maps (CAM)" if info.pooling == "gap" else "before class maps existed"
            why = f"its file has no {CLASS_MAPS!r} output (exported {when}; re-export it with python -m export.to_onnx)"
            raise ServiceError(422, "no_class_maps", f"model {info.name!r} has no class maps: {why}")

    def class_indices(self, labels: list[str]) -> tuple[int, ...]:
        """Indices of ``labels`` in the model's classes; 422 ``unknown_label`` names any that is not one."""
        classes = self.model.info.classes
        unknown = [label for label in labels if label not in classes]
        if unknown:
            shown = ", ".join(repr(c) for c in classes[:20]) + (", ..." if len(classes) > 20 else "")
            raise ServiceError(
                422, "unknown_label", f"explain={unknown[0]!r} is not a class of this model; its classes are {shown}"
            )
        return tuple(dict.fromkeys(classes.index(label) for label in labels))

    async def prepare(self, images: list[tuple[str, bytes | memoryview]], display: int = 0) -> list[Prepared]:
        """Decode and preprocess ``images``, each kept at ``display`` pixels on its longer side too when that is
        positive (whole-image overlays); a bad image raises its own ServiceError. A lone small image is done on
        the event loop (``INLINE_PIXELS``), anything else in the decode pool."""
        loop = asyncio.get_running_loop()
        with timings.stage("decode"):
            if len(images) == 1:  # the common case, without gather's bookkeeping
                name, data = images[0]
                image = open_image(data, self.settings.max_image_pixels, name)  # its header only
                if image.width * image.height <= INLINE_PIXELS:
                    return [self._prepare(image, data, name, display)]
                return [await handoff.call(self.decode_pool, self._prepare, image, data, name, display)]
            pool = self.decode_pool
            return await asyncio.gather(
                *(loop.run_in_executor(pool, self._open_prepare, data, name, display) for name, data in images)
            )

    def _open_prepare(self, data: bytes | memoryview, name: str, display: int) -> Prepared:
        return self._prepare(open_image(data, self.settings.max_image_pixels, name), data, name, display)

    def _prepare(self, opened: Opened, data: bytes | memoryview, name: str, display: int) -> Prepared:
        start = time.perf_counter()
        # Only as many pixels as the model and the overlay need: a phone photo decodes at an eighth of its sides.
        image = decode_opened(opened, data, self.preprocessor.decode_side, display, name)
        decoded = time.perf_counter()
        prepared = self.preprocessor(image.image, display, image.size)
        self.metrics.decode_seconds.observe(decoded - start)
        self.metrics.preprocess_seconds.observe(time.perf_counter() - decoded)
        return prepared
