"""The ONNX Runtime session: loading, warm-up, and one batched run of the outputs a batch asks for.

What a model file offers is read from its graph: the outputs of the contract's table (``service.contract.OUTPUTS``)
that it has, in the table's order; older files lack the optional ones and serve everything else. Once the model is
watched (``service.monitoring``), every run also fetches the outputs its monitor reads, whatever it was asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.contract import ATTENTION, CLASS_MAPS, DIMS, INPUT, OUTPUT_NAMES, output_spec, required_outputs
from service.errors import ServiceError
from service.metadata import ModelError, ModelInfo, parse_metadata
from service.providers import CUDA, check_loaded, requested_providers
from service.settings import usable_cores

log = logging.getLogger(__name__)


class ImageOutput(dict[str, np.ndarray]):
    """One image's share of a batch: the outputs its batch ran, by name (``output["logits"]``, [classes]).

    An output of the contract's table also reads as an attribute (``output.attention``), None when the batch did
    not run it or the model has none.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> np.ndarray | None:
        if name in OUTPUT_NAMES:
            return self.get(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


@dataclass(frozen=True)
class ServedOutput:
    """An output of the served file as the service lists it: ``shape`` with None for the batch and any size
    not known."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    on_request: bool


class OnnxModel:
    """Runs batches through one session (or, beside another batch, through the one :meth:`share` adds); pads each
    batch up to a bucket size when ``buckets`` is set."""

    def __init__(self, session: ort.InferenceSession, info: ModelInfo, buckets: tuple[int, ...] = ()):
        self.session, self.info, self.buckets = session, info, buckets
        graph = {o.name: o for o in session.get_outputs()}
        # The table's outputs this file has, in the table's order.
        self.outputs: tuple[str, ...] = tuple(name for name in OUTPUT_NAMES if name in graph)
        # What a run computes unless it names its outputs: every output not kept for the requests that ask.
        self.defaults: tuple[str, ...] = tuple(n for n in self.outputs if not output_spec(n).on_request)
        # Sizes of the table's symbolic dimensions: the class count from the metadata, the others from the graph
        # where it fixes them, else from warm-up's outputs (which also checks them all).
        self.sizes: dict[str, int] = {"classes": len(info.classes)}
        for name in self.outputs:
            for symbol, dim in zip(output_spec(name).shape[1:], graph[name].shape[1:], strict=False):
                if isinstance(dim, int):
                    self.sizes.setdefault(symbol, dim)
        # By (outputs asked, exactly those): the outputs a run returns, and those it fetches (the monitor's added).
        self._fetches: dict[tuple[frozenset[str], bool], tuple[list[str], list[str]]] = {}
        self._monitor: Callable[[dict[str, np.ndarray]], None] | None = None
        self._watched: frozenset[str] = frozenset()
        self._shared = session

    def share(self, session: ort.InferenceSession) -> None:
        """Run ``shared=True`` batches on ``session``: the same file opened with a share of the intra-op threads, for
        batches that run beside another (``service.batcher``). Concurrent runs of one session are safe."""
        self._shared = session

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def has(self, name: str) -> bool:
        """Whether the file has output ``name``."""
        return name in self.outputs

    @property
    def has_attention(self) -> bool:
        return self.has(ATTENTION)

    @property
    def has_class_maps(self) -> bool:
        return self.has(CLASS_MAPS)

    @property
    def explanation(self) -> str | None:
        """What the file's class maps are (``contract.EXPLANATIONS``: "ca-stream" or "cam"); None without any."""
        return self.info.explanation if self.has_class_maps else None

    @property
    def attention_shape(self) -> tuple[int, int] | None:
        """The attention grid (h, w), once known (from the graph, or from warm-up); None for a model without one."""
        if not self.has_attention or "h" not in self.sizes or "w" not in self.sizes:
            return None
        return self.sizes["h"], self.sizes["w"]

    def listing(self) -> list[ServedOutput]:
        """The file's outputs in the table's order, each with its shape as far as it is known."""
        return [
            ServedOutput(
                name,
                output_spec(name).dtype,
                (None, *(self.sizes.get(symbol) for symbol in output_spec(name).shape[1:])),
                output_spec(name).on_request,
            )
            for name in self.outputs
        ]

    def lacks(self, name: str) -> str | None:
        """Why the file has no output ``name``, for an answer that refuses it; None when it has it."""
        if self.has(name):
            return None
        if name not in OUTPUT_NAMES:
            return f"unknown output {name!r}"
        info, label = self.info, name.replace("_", " ")
        if info.pooling not in output_spec(name).poolings:
            return f"model {info.name!r} has no {label}: it pools with {info.pooling.upper()}, whose graph has none"
        return (
            f"model {info.name!r} has no {label}: its file was exported before the {name!r} output existed; "
            "re-export it with `python -m export.to_onnx`"
        )

    def require(self, names: Iterable[str]) -> None:
        """Raise 422 ``no_<output>`` for the first of ``names`` the file lacks, saying why and the way out."""
        for name in names:
            why = self.lacks(name)
            if why is not None:
                raise ServiceError(422, f"no_{name}", why)

    def watch(self, monitor: Callable[[dict[str, np.ndarray]], None], outputs: Iterable[str]) -> None:
        """From now on, every run also fetches ``outputs`` and hands ``monitor`` the batch's arrays by name, each
        [n, ...] (padding left out); the records a run returns still hold what it was asked for, and only that."""
        watched = frozenset(outputs)
        missing = sorted(watched - set(self.outputs))
        if missing:
            raise ModelError(f"{self.info.name} has no {missing[0]!r} output to watch; it has {list(self.outputs)}")
        self._monitor, self._watched = monitor, watched
        self._fetches.clear()

    def run(
        self, batch: np.ndarray, wanted: Collection[str] | None = None, *, shared: bool = False, **extra: bool
    ) -> list[ImageOutput]:
        """``batch`` is [n, 3, crop, crop] float32; returns n records of the outputs ``wanted``, in order.

        Exactly the outputs named are returned (and fetched, with those the monitor reads); none named takes the
        defaults (every output not computed only on request), and ``name=True`` keywords add outputs to them
        (``run(batch, class_maps=True)``).
        """
        names, fetched = self._fetch(frozenset(wanted or ()) | {name for name, on in extra.items() if on}, bool(wanted))
        n = len(batch)
        size = next((b for b in self.buckets if b >= n), n)
        if size > n:
            batch = np.concatenate([batch, np.zeros((size - n, *batch.shape[1:]), batch.dtype)])
        results = (self._shared if shared else self.session).run(fetched, {INPUT: batch})
        if any(len(r) < n for r in results):
            raise RuntimeError(f"the model returned {min(map(len, results))} outputs for a batch of {n} images")
        arrays = {name: r[:n] for name, r in zip(fetched, results, strict=True)}
        if self._monitor is not None:
            self._monitor(arrays)
        rows = zip(*(arrays[name] for name in names), strict=True)
        return [ImageOutput(zip(names, row, strict=True)) for row in rows]

    def _fetch(self, asked: frozenset[str], exact: bool) -> tuple[list[str], list[str]]:
        """The outputs a run returns for ``asked`` (added to the defaults unless ``exact``), and those it fetches (the
        monitor's added), both in the table's order."""
        key = (asked, exact)
        found = self._fetches.get(key)
        if found is None:
            missing = sorted(asked - set(self.outputs))
            if missing:
                raise ModelError(f"{self.info.name} has no {missing[0]!r} output; it has {list(self.outputs)}")
            chosen = asked if exact else asked | set(self.defaults)
            names = [name for name in self.outputs if name in chosen]
            found = self._fetches[key] = (names, [name for name in self.outputs if name in chosen | self._watched])
        return found

    def warm_up(self, sizes: list[int]) -> None:
        """Run every batch size that will be used once (the first with every output), and check each output's shape
        against the contract's table and the metadata's class count."""
        crop = self.info.preprocessing.crop
        for index, size in enumerate(sizes):
            outputs = self.run(np.zeros((size, 3, crop, crop), np.float32), self.outputs if index == 0 else None)
            for name, array in outputs[0].items():
                self._check_shape(name, array.shape)
            if self._shared is not self.session:
                self.run(np.zeros((size, 3, crop, crop), np.float32), shared=True)
        log.info("warmed up batch sizes %s on %s", sizes, self.providers[0])

    def _check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        """One image's ``shape`` of output ``name`` against the table's rule; learns the sizes not known yet."""
        rule = output_spec(name).shape[1:]
        if len(shape) != len(rule):
            raise ModelError(
                f"the model's {name!r} output has shape {list(shape)} per image; the contract says [{', '.join(rule)}]"
                "; re-export it"
            )
        for symbol, dim in zip(rule, shape, strict=True):
            known = self.sizes.setdefault(symbol, int(dim))
            if known != dim:
                raise ModelError(
                    f"the model's {name!r} output has {dim} along {symbol!r} where {known} was expected "
                    f"({DIMS[symbol]}); re-export it"
                )


# Within a run, an intra-op thread that runs out of work spins for up to 20 us before it blocks, which covers the gap
# from one operator's parallel section to the next; as a run ends they stop spinning (``force_spinning_stop``), so
# that between runs they take no CPU from decoding and the event loop. Blocking at once instead, the worker had to be
# woken for nearly every operator, and on a virtual machine whose other core had idled (a 12 MP photo's 10 ms decode
# on one core) each wake-up was slow: the model's run took 13-15 ms in the service against its 9 ms. Spinning longer
# (200 us) cost throughput under load, where the threads of two batches share the cores (docs/service.md).
SPINNING = {
    "session.intra_op.allow_spinning": "1",
    "session.intra_op.spin_duration_us": "20",
    "session.force_spinning_stop": "1",
    "session.inter_op.allow_spinning": "0",
}


def load_model(path: Path, providers: list[str], intra_threads: int = 0, inter_threads: int = 0) -> OnnxModel:
    """Open ``path`` with the requested providers and ``intra_threads`` (0: the usable cores); raise
    :class:`ModelError` with a readable reason."""
    requested, auto = requested_providers(providers)
    options = ort.SessionOptions()
    # Never ONNX Runtime's own count (0): it counts the machine's cores, whatever a container's CPU limit, and pins
    # one thread to each, so the kernel cannot move one off a core that the calling thread, decoding or the event
    # loop needs at that moment.
    options.intra_op_num_threads = intra_threads or usable_cores()
    options.inter_op_num_threads = inter_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for key, value in SPINNING.items():
        options.add_session_config_entry(key, value)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=requested)
    except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable files
        raise ModelError(f"cannot load ONNX model {str(path)!r}: {exc}; re-export it with `make export`") from exc
    in_use = session.get_providers()
    check_loaded(requested, in_use, auto)
    if auto and CUDA in requested and CUDA not in in_use:
        log.warning("CUDA is available but its provider did not load; running on CPU")
    info = parse_metadata(session.get_modelmeta().custom_metadata_map, str(path))
    _check_graph(session, info, str(path))
    log.info("loaded %s (%s, %d classes) with providers %s", info.name, info.pooling, len(info.classes), in_use)
    return OnnxModel(session, info)


def _check_graph(session: ort.InferenceSession, info: ModelInfo, source: str) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    expected = set(required_outputs(info.pooling))
    if INPUT not in inputs or not expected <= outputs:
        raise ModelError(
            f"{source}: graph has inputs {sorted(inputs)} and outputs {sorted(outputs)}; a {info.pooling!r} model "
            f"needs input {INPUT!r} and outputs {sorted(expected)}"
        )
    crop = info.preprocessing.crop
    shape = inputs[INPUT].shape
    fixed = zip(shape[1:], (3, crop, crop), strict=False)
    if len(shape) != 4 or any(isinstance(dim, int) and dim != want for dim, want in fixed):
        raise ModelError(
            f"{source}: input {INPUT!r} has shape {shape}; the metadata's crop needs [N, 3, {crop}, {crop}]"
        )
