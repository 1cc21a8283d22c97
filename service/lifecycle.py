"""The service's lifecycle: load the model, warm it up, publish the serving object, drain, stop.

Owned by the app's lifespan. ``serving`` stays None until warm-up has finished, then holds one immutable
:class:`~service.serving.Serving` for the rest of the process; ``phase`` is what the probes report: this
process's own phase, or, in one of several worker processes, the whole service's (see ``service.fleet``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from service.batcher import Batcher, lane_executor
from service.fleet import Phase, Slot
from service.memory import pin_thresholds
from service.metrics import Metrics
from service.model import OnnxModel, load_model
from service.monitoring import watch
from service.preprocess import Preprocessor
from service.providers import CUDA
from service.serving import Serving, queue_limit
from service.settings import Settings
from service.workers import worker_pool

log = logging.getLogger(__name__)

# A batch starts beside a running one only once that one has run this long: where runs end sooner (a small model, the
# benchmarks' null model) one batch at a time keeps up, and a second would only add thread hops and split the batches.
BESIDE_AFTER_S = 0.002


def batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Bucket sizes a batch is padded up to: powers of two below the maximum, and the maximum."""
    sizes = {max_batch_size}
    size = 1
    while size < max_batch_size:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


class Lifecycle:
    """Loads the model at start, warms it up in the background, then publishes ``serving`` until stopped."""

    def __init__(self, settings: Settings, metrics: Metrics, slot: Slot | None = None):
        self.settings, self.metrics, self._slot = settings, metrics, slot
        self._set(Phase.starting)
        # Read at each scrape rather than set: ``drain`` runs in a signal handler, which must take no lock that
        # the thread it interrupted may hold (with several workers, every metric shares one lock).
        metrics.ready.set_function(lambda: float(self.phase is Phase.ready))
        self.serving: Serving | None = None
        self._warm_task: asyncio.Task | None = None
        self._batcher: Batcher | None = None
        self._decode_pool: ThreadPoolExecutor | None = None
        self._inference: list[ThreadPoolExecutor] = []  # one thread per lane
        self._lanes = 1

    @property
    def phase(self) -> Phase:
        """What the probes report: this process's phase, or with sibling workers, the service's."""
        return self._phase if self._slot is None else self._slot.board.service_phase()

    def _set(self, phase: Phase) -> None:
        self._phase = phase
        if self._slot is not None:
            self._slot.publish(phase)

    async def start(self) -> None:
        """Load the model now (a bad file fails start-up); warm it up in the background.

        A lifespan may run more than once (test transports restart apps): each start begins afresh.
        """
        self.serving, self._batcher, self._decode_pool = None, None, None
        self._set(Phase.starting)
        s = self.settings
        # Before the first image: large buffers go back to the system when freed, small ones stay (service.memory).
        pin_thresholds()
        # Each session is opened on a lane's thread, at the workers' priority, which ONNX Runtime's own threads
        # inherit: the first lane's runs lone batches, the others' mostly run batches beside another.
        self._inference = [lane_executor(0, s.worker_niceness)]
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(
            self._inference[0], load_model, s.model_path, s.provider_list, s.session_threads(), s.inter_op_threads
        )
        self._lanes, threads = s.lanes(model.providers[0])
        self._inference += [lane_executor(lane, s.worker_niceness) for lane in range(1, self._lanes)]
        if self._lanes > 1:  # the same file again, with a share of the threads, for batches that run side by side
            shared = await loop.run_in_executor(
                self._inference[1], load_model, s.model_path, s.provider_list, threads, s.inter_op_threads
            )
            model.share(shared.session)
            log.info("up to %d batches at once under load, %d intra-op thread(s) each", self._lanes, threads)
        info = model.info
        self.metrics.model_info.labels(
            info.name, info.version, info.backbone, info.pooling, info.precision, model.providers[0]
        ).set(1)
        pad = s.pad_batches == "on" or (s.pad_batches == "auto" and model.providers[0] == CUDA)
        model.buckets = batch_sizes(s.max_batch_size) if pad else ()
        self._warm_task = asyncio.create_task(self._warm_up(model, sorted(model.buckets or {1, s.max_batch_size})))

    async def _warm_up(self, model: OnnxModel, sizes: list[int]) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._inference[0], model.warm_up, sizes)
        except Exception:
            log.exception("warm-up failed; the service stays unready and /healthz reports the failure")
            self._set(Phase.failed)
            return
        watch(self.metrics, model)  # from now on: warm-up's zeros are not the model's answers
        s = self.settings
        self._batcher = Batcher(
            model.run,
            max_batch_size=s.max_batch_size,
            max_delay_s=s.max_batch_delay_ms / 1000,
            max_queue=s.max_queue,
            timeout_s=s.request_timeout_ms / 1000,
            retry_after_s=s.retry_after_s,
            metrics=self.metrics,
            executors=self._inference,
            queue_limit=queue_limit(s),
            lanes=self._lanes,
            shared_run=partial(model.run, shared=True),
            beside_after_s=BESIDE_AFTER_S,
        )
        self._batcher.start()
        self._decode_pool = worker_pool(s.decode_workers, "castream-decode", s.worker_niceness)
        preprocessor = Preprocessor(model.info.preprocessing)
        self.serving = Serving(s, self.metrics, model, preprocessor, self._batcher, self._decode_pool)
        # What start-up made (routes, validators, the model's metadata) lives as long as the process: moved out of
        # the collector's generations, it is no longer scanned by the collections that requests' garbage triggers.
        gc.collect()
        gc.freeze()
        if self._phase is Phase.starting:
            self._set(Phase.ready)
            log.info("ready: %s on %s", model.info.name, model.providers)

    def drain(self) -> None:
        """Report unready from now on; accepted and new requests are still served until ``stop``."""
        if self._phase is not Phase.failed:
            self._set(Phase.draining)

    async def stop(self) -> None:
        self.drain()
        if self._warm_task is not None and not self._warm_task.done():
            self._warm_task.cancel()
        if self._batcher is not None:
            await self._batcher.stop(self.settings.shutdown_timeout_s)  # shuts the lanes' threads down too
        else:
            for executor in self._inference:
                executor.shutdown(wait=False, cancel_futures=True)
        if self._decode_pool is not None:
            self._decode_pool.shutdown(wait=False, cancel_futures=True)
