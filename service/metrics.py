"""Prometheus metrics, one registry per app. Latencies are histograms so percentiles aggregate across replicas."""

from __future__ import annotations

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

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """Every ``castream_*`` metric; docs/service.md lists them for dashboards and autoscaling."""

    def __init__(self) -> None:
        disable_created_metrics()  # the *_created series only add noise to dashboards
        self.registry = CollectorRegistry()
        r = self.registry
        # The standard process_* (memory, CPU, open fds) and python_* (GC, version) series, as the default registry
        # has them: dashboards and alerts written for any Python exporter work here too.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
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
        self.queue_depth = Gauge("castream_queue_depth", "Images waiting in the batch queue", registry=r)
        self.in_flight = Gauge("castream_requests_in_flight", "HTTP requests being handled", registry=r)
        self.rejections = Counter(
            "castream_rejections", "Requests refused, by reason (the error code)", ["reason"], registry=r
        )
        self.images = Counter("castream_images_classified", "Images classified", registry=r)
        self.ready = Gauge("castream_ready", "1 once the model is loaded and warmed up, 0 otherwise", registry=r)
        self.model_info = Gauge(
            "castream_model_info",
            "Always 1; the labels describe the model being served",
            ["name", "version", "backbone", "pooling", "precision", "provider"],
            registry=r,
        )

    def reject(self, reason: str) -> None:
        self.rejections.labels(reason=reason).inc()

    def batch(self, size: int, seconds: float) -> None:
        self.batch_images.observe(size)
        self.inference_seconds.observe(seconds)
        self.images.inc(size)
