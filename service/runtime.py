"""The running service: model, preprocessing, batcher, thread pools and readiness, owned by the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from functools import partial

import numpy as np

from service.batcher import Batcher
from service.contract import CLASS_MAPS
from service.errors import ServiceError, not_ready
from service.imaging import decode
from service.metrics import Metrics
from service.model import ImageOutput, OnnxModel, load_model
from service.predict import Options, prediction
from service.preprocess import Prepared, Preprocessor
from service.providers import CUDA
from service.schemas import AttentionMode, ClassifyResponse, ModelRef
from service.settings import Settings

log = logging.getLogger(__name__)


class Phase(StrEnum):
    starting = "starting"
    ready = "ready"
    draining = "draining"
    failed = "failed"


def batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Bucket sizes a batch is padded up to: powers of two below the maximum, and the maximum."""
    sizes = {max_batch_size}
    size = 1
    while size < max_batch_size:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


class Runtime:
    """Loads the model at start, warms it up in the background, then serves ``classify`` until stopped."""

    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings, self.metrics = settings, metrics
        self.phase = Phase.starting
        self.model: OnnxModel | None = None
        self.preprocessor: Preprocessor | None = None
        self.batcher: Batcher | None = None
        self.decode_pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="castream-decode")
        self._warm_task: asyncio.Task | None = None

    async def start(self) -> None:
        """Load the model now (a bad file fails start-up); warm it up in the background."""
        s = self.settings
        self.model = await asyncio.to_thread(
            load_model, s.model_path, s.provider_list, s.intra_op_threads, s.inter_op_threads
        )
        info = self.model.info
        self.preprocessor = Preprocessor(info.preprocessing)
        self.metrics.model_info.labels(
            info.name, info.version, info.backbone, info.pooling, info.precision, self.model.providers[0]
        ).set(1)
        pad = s.pad_batches == "on" or (s.pad_batches == "auto" and self.model.providers[0] == CUDA)
        self.model.buckets = batch_sizes(s.max_batch_size) if pad else ()
        self._warm_task = asyncio.create_task(self._warm_up(list(self.model.buckets or {1, s.max_batch_size})))

    async def _warm_up(self, sizes: list[int]) -> None:
        assert self.model is not None
        try:
            await asyncio.to_thread(self.model.warm_up, sorted(sizes))
        except Exception:
            log.exception("warm-up failed; the service stays unready and /healthz reports the failure")
            self.phase = Phase.failed
            return
        s = self.settings
        self.batcher = Batcher(
            self.model.run,
            max_batch_size=s.max_batch_size,
            max_delay_s=s.max_batch_delay_ms / 1000,
            max_queue=s.max_queue,
            timeout_s=s.request_timeout_ms / 1000,
            retry_after_s=s.retry_after_s,
            metrics=self.metrics,
        )
        self.batcher.start()
        if self.phase is Phase.starting:
            self.phase = Phase.ready
            self.metrics.ready.set(1)
            log.info("ready: %s on %s", self.model.info.name, self.model.providers)

    def drain(self) -> None:
        """Report unready from now on; accepted and new requests are still served until ``stop``."""
        if self.phase is not Phase.failed:
            self.phase = Phase.draining
        self.metrics.ready.set(0)

    async def stop(self) -> None:
        self.drain()
        if self._warm_task is not None and not self._warm_task.done():
            self._warm_task.cancel()
        if self.batcher is not None:
            await self.batcher.stop(self.settings.shutdown_timeout_s)
        self.decode_pool.shutdown(wait=False, cancel_futures=True)

    def admit(self, images: int) -> None:
        """Refuse early (503) when not ready or when the queue has no room, before any work is spent."""
        if self.batcher is None or self.model is None:
            raise not_ready(self.settings.retry_after_s)
        self.batcher.admit(images)

    def require_class_maps(self) -> None:
        """Raise 422 ``no_class_maps`` unless the model can give class maps."""
        assert self.model is not None
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
        assert self.model is not None
        classes = self.model.info.classes
        unknown = [label for label in labels if label not in classes]
        if unknown:
            shown = ", ".join(repr(c) for c in classes[:20]) + (", ..." if len(classes) > 20 else "")
            raise ServiceError(
                422, "unknown_label", f"explain={unknown[0]!r} is not a class of this model; its classes are {shown}"
            )
        return tuple(dict.fromkeys(classes.index(label) for label in labels))

    async def prepare(self, images: list[tuple[str, bytes]], keep_original: bool = False) -> list[Prepared]:
        """Decode and preprocess ``images`` in the decode pool; a bad image raises its own ServiceError."""
        loop = asyncio.get_running_loop()
        return await asyncio.gather(
            *(loop.run_in_executor(self.decode_pool, self._prepare, data, name, keep_original) for name, data in images)
        )

    async def infer(self, inputs: list[np.ndarray], class_maps: bool = False) -> list[ImageOutput]:
        """Run model inputs [3, crop, crop] through the shared batcher; class maps are fetched only if asked."""
        self.admit(len(inputs))
        assert self.batcher is not None
        return await self.batcher.submit(inputs, frozenset({CLASS_MAPS}) if class_maps else frozenset())

    async def classify(self, images: list[tuple[str, bytes]], options: Options) -> str:
        """The JSON body answering ``images``: top-k labels, attention and class maps per image, in order."""
        self.admit(len(images))
        if options.needs_class_maps:
            self.require_class_maps()
        prepared = await self.prepare(images, options.needs_original)
        outputs = await self.infer([p.input for p in prepared], options.needs_class_maps)
        encode = partial(self._encode, outputs, prepared, options)
        # PNG encoding is worth a thread hop; top-k and the numeric grids are not.
        if options.attention is AttentionMode.overlay:
            return await asyncio.get_running_loop().run_in_executor(self.decode_pool, encode)
        return encode()

    def _encode(self, outputs: list[ImageOutput], prepared: list[Prepared], options: Options) -> str:
        assert self.model is not None
        start = time.perf_counter()
        info = self.model.info
        predictions = [prediction(o, p, info.classes, options) for o, p in zip(outputs, prepared, strict=True)]
        response = ClassifyResponse(model=ModelRef(name=info.name, version=info.version), predictions=predictions)
        # Already a validated model: serialised directly rather than validated again by FastAPI.
        body = response.model_dump_json()
        self.metrics.encode_seconds.labels(attention=options.attention.value).observe(time.perf_counter() - start)
        return body

    def _prepare(self, data: bytes, name: str, keep_original: bool = False) -> Prepared:
        assert self.preprocessor is not None
        start = time.perf_counter()
        image = decode(data, self.settings.max_image_pixels, name)
        decoded = time.perf_counter()
        prepared = self.preprocessor(image, keep_original)
        self.metrics.decode_seconds.observe(decoded - start)
        self.metrics.preprocess_seconds.observe(time.perf_counter() - decoded)
        return prepared
