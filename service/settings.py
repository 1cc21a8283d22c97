"""Service settings: environment variables prefixed ``CASTREAM_``, validated once at start-up."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.contract import CPU
from service.files import unreadable
from service.overlay import PNG_LEVEL

PREFIX = "CASTREAM_"
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # "<quota> <period>" in microseconds, or "max <period>" for no limit


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the environment variable."""


class Settings(BaseSettings):
    """Every knob of the service. docs/service.md lists them with their meaning."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True)

    model_path: Path = Path("models/castream.onnx")
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = False
    log_format: Literal["text", "json"] = "text"  # json: one object per line, and one access line per request

    max_batch_size: int = Field(8, ge=1, le=1024)
    max_batch_delay_ms: float = Field(0.0, ge=0, le=10_000)  # 0: never wait for company (an opt-in)
    max_queue: int = Field(64, ge=1, le=1_000_000)
    request_timeout_ms: float = Field(10_000, gt=0, le=3_600_000)
    retry_after_s: int = Field(1, ge=0, le=3600)

    providers: str = "auto"
    pad_batches: Literal["auto", "on", "off"] = "auto"
    intra_op_threads: int = Field(0, ge=0, le=1024)
    concurrent_batches: int = Field(0, ge=0, le=64)  # 0: 2 on a CPU with 2 or more intra-op threads, else 1
    inter_op_threads: int = Field(0, ge=0, le=1024)
    decode_threads: int = Field(0, ge=0, le=256)
    worker_niceness: int = Field(5, ge=0, le=19)
    overlay_png_level: int = Field(PNG_LEVEL, ge=0, le=9)

    max_images_per_request: int = Field(16, ge=1, le=1024)
    max_request_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    body_timeout_s: float = Field(30.0, gt=0, le=3600)  # a request body must have arrived within this

    api_key: SecretStr | None = None
    drain_delay_s: float = Field(3.0, ge=0, le=600)
    shutdown_timeout_s: float = Field(20.0, gt=0, le=3600)
    workers: int = Field(1, ge=1, le=64)  # serving processes on the one port; each gets its share of queue and cores

    @field_validator("model_path")
    @classmethod
    def _model_exists(cls, path: Path) -> Path:
        if not path.is_file():
            raise ValueError(f"no model file at {str(path)!r}; build one with `make export` or point to a .onnx file")
        reason = unreadable(path)
        if reason:
            raise ValueError(reason)
        return path

    @field_validator("providers")
    @classmethod
    def _providers_listed(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",")]
        if not all(names):
            raise ValueError(f"got {value!r}; expected 'auto' or a comma-separated list such as 'cuda,cpu'")
        return ",".join(names)

    @field_validator("api_key")
    @classmethod
    def _key_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is set but empty; unset it to disable authentication or give a non-empty token")
        return value

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> Settings:
        if self.max_queue < self.max_images_per_request:
            raise ValueError(
                f"{PREFIX}MAX_QUEUE={self.max_queue} is smaller than {PREFIX}MAX_IMAGES_PER_REQUEST="
                f"{self.max_images_per_request}, so the largest request could never be queued; raise the first "
                "or lower the second"
            )
        share = self.max_queue // self.workers
        if share < self.max_images_per_request:
            raise ValueError(
                f"{PREFIX}MAX_QUEUE={self.max_queue} is the whole service's queue, and each of {PREFIX}WORKERS="
                f"{self.workers} processes gets {share} images of it, fewer than {PREFIX}MAX_IMAGES_PER_REQUEST="
                f"{self.max_images_per_request}, so the largest request could never be queued; raise {PREFIX}MAX_QUEUE "
                f"to at least {self.workers * self.max_images_per_request}, or lower one of the others"
            )
        return self

    def worker_share(self, index: int) -> Settings:
        """The settings worker ``index`` of ``workers`` runs with: its part of the queue (the parts add up to
        ``max_queue``) and, where the thread counts are automatic (0), its part of the usable cores."""
        n, cores = self.workers, usable_cores()
        return self.model_copy(
            update={
                "max_queue": self.max_queue // n + (index < self.max_queue % n),
                "intra_op_threads": self.intra_op_threads or max(1, cores // n),
                "decode_threads": self.decode_threads or max(1, min(4, cores // n)),
            }
        )

    def session_threads(self) -> int:
        """ONNX Runtime's intra-op threads for a batch that runs alone: ``intra_op_threads``, or where it is 0 the
        usable cores, as :func:`service.model.load_model` resolves it (never ONNX Runtime's own count)."""
        return self.intra_op_threads or usable_cores()

    def lanes(self, provider: str) -> tuple[int, int]:
        """How many batches may run at once on ``provider`` and the intra-op threads of a batch that runs beside
        another: ``concurrent_batches``, or where it is 0, two on a CPU with two or more threads; one on a GPU."""
        threads = self.session_threads()
        lanes = self.concurrent_batches or (2 if threads >= 2 else 1)
        if provider != CPU:
            lanes = 1
        return lanes, max(1, threads // lanes)

    @property
    def decode_workers(self) -> int:
        return self.decode_threads or min(4, os.cpu_count() or 1)

    @property
    def provider_list(self) -> list[str]:
        return self.providers.split(",")


def usable_cores(quota_file: Path = CPU_MAX) -> int:
    """The cores this process may use: those it may run on (its CPU affinity, which a container's CPU set
    narrows), fewer under a CPU quota (a container's CPU limit, as cgroup v2's ``cpu.max`` states it)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = quota_file.read_text().split()[:2]
        limit = int(quota) // int(period) if quota != "max" else cores
    except (OSError, ValueError):  # no cgroup v2 here, or a format this does not know: no quota
        limit = cores
    return max(1, min(cores, limit))


def load_settings(**overrides: object) -> Settings:
    """Read the environment (``overrides`` win) and turn validation errors into one readable message."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if error["loc"]:
            field = str(error["loc"][0])
            shown = "<hidden>" if field == "api_key" else repr(error.get("input"))
            lines.append(f"{PREFIX}{field.upper()}={shown}: {message}")
        else:
            lines.append(message)
    return "invalid service settings:\n  " + "\n  ".join(lines)
