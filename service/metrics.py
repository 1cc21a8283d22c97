"""Prometheus metrics, one registry per app. Latencies are histograms so percentiles aggregate across replicas.

With several worker processes (``CASTREAM_WORKERS``), each process writes its values to files in a directory
the parent made (prometheus-client's multiprocess mode), and a scrape, whichever worker answers it, reads them
all: counters and histograms summed over every worker that ever ran (the files of a dead one stay), gauges as
their ``multiprocess_mode`` says.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from service.contract import FIGURES
from service.fleet import Phase, Slot
from service.procstats import ServiceProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# The monitored figures lie in [0, 1]: steps of 0.05, finer towards both ends, where a confident model's top-1
# probability and a sharp map's entropy (near 0) or peak on a fine grid (1/49 for a uniform 7 x 7 one) sit.
FIGURE_BUCKETS = (0.01, 0.025, *(round(0.05 * i, 2) for i in range(1, 20)), 0.975, 0.99, 0.995, 0.999, 1.0)
FIGURE_HELP = {
    "attention_entropy": "Entropy of each classified image's attention map over log(grid cells): 1 uniform, 0 one cell",
    "attention_peak": "Largest weight of each classified image's attention map: 1 / (grid cells) uniform, 1 one cell",
    "top1_probability": "Largest softmax probability of each classified image",
}
READY = "castream_ready"
READY_HELP = "1 once the model is loaded and warmed up (in every worker process), 0 otherwise"


class Metrics:
    """Every ``castream_*`` metric; docs/service.md lists them for dashboards and autoscaling."""

    def __init__(self, shared: Slot | None = None) -> None:
        disable_created_metrics()  # the *_created series only add noise to dashboards
        self.registry = CollectorRegistry()
        # The standard process_* (memory, CPU, open fds) and python_* (GC, version) series, as the default registry
        # has them: dashboards and alerts written for any Python exporter work here too.
        if shared is None:
            r = self.registry
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        else:
            # The metrics below are only written (to this process's files); the registry reads every process's.
            r = None
            PlatformCollector(registry=self.registry)
            self.registry.register(SharedCollector(shared))
        self.requests = Counter(
            "castream_requests", "HTTP requests answered, by route and status code", ["route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "castream_request_duration_seconds", "Time to answer an HTTP request", ["route"], buckets=LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.queue_wait_seconds = Histogram(
            "castream_queue_wait_seconds",
            "Time a request waited in the batch queue",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "castream_inference_duration_seconds", "Time of one session.run over a batch", buckets=LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.decode_seconds = Histogram(
            "castream_decode_duration_seconds", "Time to decode one image into RGB pixels", buckets=LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.preprocess_seconds = Histogram(
            "castream_preprocess_duration_seconds",
            "Time to resize, crop and normalise one decoded image",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.encode_seconds = Histogram(
            "castream_encode_duration_seconds",
            "Time to build one response body: top-k labels, attention grid, PNG overlays and JSON",
            ["attention"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_images = Histogram(
            "castream_batch_size_images", "Images per session.run", buckets=BATCH_BUCKETS, registry=r
        )
        # Across processes: what is queued and in flight now in the live workers, summed.
        self.queue_depth = Gauge(
            "castream_queue_depth", "Images waiting in the batch queue", multiprocess_mode="livesum", registry=r
        )
        self.in_flight = Gauge(
            "castream_requests_in_flight", "HTTP requests being handled", multiprocess_mode="livesum", registry=r
        )
        self.rejections = Counter(
            "castream_rejections", "Requests refused, by reason (the error code)", ["reason"], registry=r
        )
        self.images = Counter("castream_images_classified", "Images classified", registry=r)
        self.shared_batches = Counter(
            "castream_shared_batches",
            "Batches that ran beside another one, on the session with a share of the intra-op threads",
            registry=r,
        )
        # The lifecycle gives its value; across processes, SharedCollector reports it from the shared board.
        self.ready = Gauge(READY, READY_HELP, multiprocess_mode="livemin", registry=r)
        # Across processes: every worker sets the same labels to 1, so the maximum is the one series it has alone.
        self.model_info = Gauge(
            "castream_model_info",
            "Always 1; the labels describe the model being served",
            ["name", "version", "backbone", "pooling", "precision", "provider"],
            multiprocess_mode="max",
            registry=r,
        )
        # What the served model's explanations and confidence look like (service.monitoring), per model; and what
        # they looked like on validation images at export, for the drift alert to compare with.
        self.figures = {
            name: Histogram(f"castream_{name}", FIGURE_HELP[name], ["model"], buckets=FIGURE_BUCKETS, registry=r)
            for name in FIGURES
        }
        self.figure_reference = Gauge(
            "castream_explanation_reference",
            "Quantiles of each monitored figure on validation images, as the model file records them",
            ["model", "figure", "quantile"],
            multiprocess_mode="max",  # every worker sets the same values
            registry=r,
        )

    def reject(self, reason: str) -> None:
        self.rejections.labels(reason=reason).inc()

    def batch(self, size: int, seconds: float) -> None:
        self.batch_images.observe(size)
        self.inference_seconds.observe(seconds)
        self.images.inc(size)


class SharedCollector(Collector):
    """What a scrape of one worker among several reports for the whole service.

    The ``castream_*`` values of every worker, merged from their files; ``castream_ready`` from the shared
    board, so that it is 1 exactly when ``/readyz`` is 200 (between a worker's exit and its replacement's
    first values, the files of the others alone would say ready); and the process_* series summed over the
    parent and its workers.
    """

    def __init__(self, shared: Slot):
        self._board = shared.board
        self._files = MultiProcessCollector(None, shared.metrics_dir)
        self._processes = ServiceProcessCollector(self._board.pids)

    def collect(self) -> Iterator[Metric]:
        yield from (family for family in self._files.collect() if family.name != READY)
        yield GaugeMetricFamily(READY, READY_HELP, value=float(self._board.service_phase() is Phase.ready))
        yield from self._processes.collect()
