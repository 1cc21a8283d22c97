"""The serving core: one immutable object, published by the lifecycle once the model is warm.

Everything a request needs is here and none of it is optional: the model, its preprocessing, the batcher
and the decode threads. Routes receive it through ``service.deps.ServingDep`` (503 until it exists), are
checked for room before their body is read (``check_room``), admitted once it is in (``admit``), and then
validate, decode, run and encode through it.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from service import handoff, timings
from service.batcher import Batcher, Ticket
from service.contract import CLASS_MAPS
from service.errors import ServiceError
from service.imaging import decode_reduced
from service.metrics import Metrics
from service.model import ImageOutput, OnnxModel
from service.predict import Options, prediction
from service.preprocess import Prepared, Preprocessor
from service.schemas import AttentionMode, ClassifyResponse, ModelRef
from service.settings import Settings

_CLASS_MAPS = frozenset({CLASS_MAPS})


@dataclass(frozen=True, eq=False)
class Serving:
    """A warm model behind its batcher; ``decode_pool`` decodes and preprocesses off the event loop."""

    settings: Settings
    metrics: Metrics
    model: OnnxModel
    preprocessor: Preprocessor
    batcher: Batcher
    decode_pool: Executor

    def check_room(self, images: int = 1) -> None:
        """503 with ``Retry-After`` at once if the queue has no room for ``images``; holds nothing.

        Before a body is read: overload is refused without reading it, and a slow body holds no room.
        """
        self.batcher.check(images)

    def admit(self, images: int = 1) -> Ticket:
        """Room for ``images`` in the queue, or 503 at once: the request's one admission, once its body is in."""
        return self.batcher.admit(images)

    def require_class_maps(self) -> None:
        """Raise 422 ``no_class_maps`` unless the model can give class maps."""
        if not self.model.has_class_maps:
            info = self.model.info
            why = (
                "it pools with GAP, which has no attention to decompose the logits over"
                if not info.has_attention
                else f"its file has no {CLASS_MAPS!r} output (exported before class maps existed; re-export it)"
            )
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

    async def prepare(self, images: list[tuple[str, bytes]], display: int = 0) -> list[Prepared]:
        """Decode and preprocess ``images`` in the decode pool, each kept at ``display`` pixels on its longer side
        too when that is positive (whole-image overlays); a bad image raises its own ServiceError."""
        loop = asyncio.get_running_loop()
        with timings.stage("decode"):
            if len(images) == 1:  # the common case, without gather's bookkeeping
                name, data = images[0]
                return [await handoff.call(self.decode_pool, self._prepare, data, name, display)]
            return await asyncio.gather(
                *(loop.run_in_executor(self.decode_pool, self._prepare, data, name, display) for name, data in images)
            )

    async def infer(self, ticket: Ticket, inputs: list[np.ndarray], class_maps: bool = False) -> list[ImageOutput]:
        """Run model inputs [3, crop, crop] through the shared batcher on the request's ``ticket``."""
        return await self.batcher.submit(inputs, _CLASS_MAPS if class_maps else frozenset(), ticket)

    async def classify(self, ticket: Ticket, images: list[tuple[str, bytes]], options: Options) -> bytes:
        """The JSON body answering ``images``: top-k labels, attention and class maps per image, in order."""
        ticket.resize(len(images))
        prepared = await self.prepare(images, options.display)
        outputs = await self.infer(ticket, [p.input for p in prepared], options.needs_class_maps)
        # PNG encoding is worth a thread hop; top-k and the numeric grids are not.
        with timings.stage("encode"):
            if options.attention is AttentionMode.overlay:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self.decode_pool, self.encode, outputs, prepared, options)
            return self.encode(outputs, prepared, options)

    def encode(self, outputs: list[ImageOutput], prepared: list[Prepared], options: Options) -> bytes:
        start = time.perf_counter()
        info = self.model.info
        predictions = [prediction(o, p, info.classes, options) for o, p in zip(outputs, prepared, strict=True)]
        response = ClassifyResponse(model=ModelRef(name=info.name, version=info.version), predictions=predictions)
        # Already a validated model: serialised directly rather than validated again by FastAPI.
        body = response.__pydantic_serializer__.to_json(response)
        self.metrics.encode_seconds.labels(attention=options.attention.value).observe(time.perf_counter() - start)
        return body

    def _prepare(self, data: bytes, name: str, display: int = 0) -> Prepared:
        start = time.perf_counter()
        # Only as many pixels as the model and the overlay need: a phone photo decodes at an eighth of its sides.
        image = decode_reduced(data, self.settings.max_image_pixels, self.preprocessor.decode_side, display, name)
        decoded = time.perf_counter()
        prepared = self.preprocessor(image.image, display, image.size)
        self.metrics.decode_seconds.observe(decoded - start)
        self.metrics.preprocess_seconds.observe(time.perf_counter() - decoded)
        return prepared
