"""A Triton Inference Server model repository for one castream model file (docs/deploy.md).

python -m export.triton --model models/castream.onnx --out models/triton             # CPU instances
python -m export.triton --model models/castream.onnx --out models/triton --kind gpu  # one instance per GPU

Writes ``<out>/<name>/config.pbtxt``, ``<out>/<name>/labels.txt`` and ``<out>/<name>/<version>/model.onnx`` (a copy
of the file, byte for byte). ``python -m export.to_onnx --triton-repository DIR`` does the same right after an
export. Tensor types and shapes come from the ONNX graph, its outputs in the order of the contract's table of
outputs; the labels from its metadata, for the output of one score per class. The defaults of
the batcher, the queue and the threads are those of castream's own service and its Kubernetes manifests, so
both serve the file with the same limits.
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import onnx

from export import metadata
from service import contract
from training.files import atomic_write
from training.options import command_parser, from_args, option

log = logging.getLogger(__name__)

PLATFORM = "onnxruntime_onnx"
KINDS = ("cpu", "gpu")
CONFIG, LABELS, MODEL = "config.pbtxt", "labels.txt", "model.onnx"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

# ONNX element types and Triton's names for them.
DATA_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT16: "TYPE_INT16",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
    onnx.TensorProto.STRING: "TYPE_STRING",
}

# Per kind: the service's own defaults on CPU (CASTREAM_MAX_BATCH_SIZE, CASTREAM_MAX_QUEUE) and deploy/k8s/gpu's on
# GPU nodes; two intra-op threads as in the Kubernetes CPU pods.
DEFAULTS = {
    "cpu": {"max_batch_size": 8, "max_queue": 64, "intra_op_threads": 2},
    "gpu": {"max_batch_size": 32, "max_queue": 256, "intra_op_threads": 2},
}
REQUEST_TIMEOUT_MS = 10_000  # CASTREAM_REQUEST_TIMEOUT_MS


class Enum(str):
    """A protobuf enum value: written bare in the text format, not quoted."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as Triton sees it: the batch axis left out of ``dims``."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class TritonOptions:
    """What the repository's configuration says beyond the graph; ``None`` takes the kind's default."""

    kind: str = option("cpu", "instance kind: KIND_CPU or KIND_GPU", choices=KINDS)
    name: str | None = option(None, "model name in Triton (default: the file's model_name, as castream's /v2)")
    version: int = option(1, "model version folder")
    max_batch_size: int | None = option(None, "largest batch (default 8 on CPU, 32 on GPU)")
    max_queue: int | None = option(None, "requests queued before Triton rejects (default 64 / 256)")
    request_timeout_ms: int = option(REQUEST_TIMEOUT_MS, "queue wait before a request is rejected")
    # Triton's own default, and castream's batching: a lone request never waits for others; those that arrive
    # while an instance is busy form the next batch. A positive delay trades latency for fuller batches.
    batch_delay_us: int = option(0, "wait for fuller batches (0: never delay a request)")
    instances: int = option(1, "model instances (per GPU with --kind gpu)")
    intra_op_threads: int | None = option(None, "ONNX Runtime threads per instance (default 2)")
    inter_op_threads: int = option(1, "ONNX Runtime inter-op threads per instance")

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown instance kind {self.kind!r}; expected one of {KINDS}")
        if self.name is not None and not NAME_PATTERN.fullmatch(self.name):
            raise ValueError(f"model name {self.name!r} is not a folder name; use letters, digits, '_', '.', '-'")
        for field in ("version", "instances", "inter_op_threads", "request_timeout_ms"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be positive, got {getattr(self, field)!r}")
        for field in ("max_batch_size", "max_queue", "intra_op_threads"):
            value = getattr(self, field)
            if value is not None and value < 1:
                raise ValueError(f"{field} must be positive, got {value!r}")
        if self.batch_delay_us < 0:
            raise ValueError(f"batch_delay_us must be 0 or more, got {self.batch_delay_us!r}")

    def default(self, field: str) -> int:
        value = getattr(self, field)
        return DEFAULTS[self.kind][field] if value is None else value


def tensors(proto: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's inputs and outputs (the contract's table's, in its order); ``ValueError`` unless the first axis of
    each is one symbolic batch axis."""
    initializers = {init.name for init in proto.graph.initializer}
    inputs = [value for value in proto.graph.input if value.name not in initializers]
    batch_axes = set()

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        tensor = value.type.tensor_type
        if tensor.elem_type not in DATA_TYPES:
            raise ValueError(f"{value.name!r} has ONNX element type {tensor.elem_type}, which Triton has no type for")
        dims = list(tensor.shape.dim)
        if not dims or not dims[0].dim_param:
            raise ValueError(
                f"{value.name!r} has no symbolic batch axis first (shape {[d.dim_param or d.dim_value for d in dims]})"
                "; Triton batches on the first axis of every input and output"
            )
        batch_axes.add(dims[0].dim_param)
        # A symbolic axis other than the batch is variable for Triton (-1).
        rest = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims[1:])
        return TensorSpec(value.name, DATA_TYPES[tensor.elem_type], rest)

    graph_outputs = {value.name: value for value in proto.graph.output}
    unknown = sorted(set(graph_outputs) - set(contract.OUTPUT_NAMES))
    if unknown:
        raise ValueError(f"outputs {unknown} are not in castream's table of outputs {list(contract.OUTPUT_NAMES)}")
    # The contract's outputs that the file has, in the table's order (older files lack the optional ones).
    outputs = [graph_outputs[name] for name in contract.OUTPUT_NAMES if name in graph_outputs]
    specs = [spec(v) for v in inputs], [spec(v) for v in outputs]
    if len(batch_axes) != 1:
        raise ValueError(f"inputs and outputs name different batch axes {sorted(batch_axes)}; expected one")
    return specs


def labels(props: dict) -> list[str]:
    """The class names in logit order, from the file's metadata."""
    classes = props.get(contract.CLASSES_KEY)
    if not isinstance(classes, list) or not classes:
        raise ValueError(f"the model has no {contract.CLASSES_KEY!r} metadata list; export it with python -m export")
    for name in classes:
        if not isinstance(name, str) or "\n" in name or not name.strip():
            raise ValueError(f"class name {name!r} cannot be a line of {LABELS}")
    return classes


def model_config(proto: onnx.ModelProto, options: TritonOptions, name: str) -> dict:
    """The model configuration as nested dicts and lists, in the fields of Triton's ``ModelConfig`` message."""
    inputs, outputs = tensors(proto)
    classes = labels(metadata.read(proto))
    batch = options.default("max_batch_size")

    def entry(tensor: TensorSpec) -> dict:
        return {"name": tensor.name, "data_type": Enum(tensor.data_type), "dims": list(tensor.dims)}

    def output_entry(tensor: TensorSpec) -> dict:
        item = entry(tensor)
        rule = contract.output_spec(tensor.name).shape[1:]  # the table's shape without the batch, as dims are
        if len(rule) != len(tensor.dims):
            raise ValueError(f"{tensor.name!r} has dims {tensor.dims}; the contract's shape is [N, {', '.join(rule)}]")
        if any(symbol == "classes" and dim != len(classes) for symbol, dim in zip(rule, tensor.dims, strict=True)):
            raise ValueError(f"{tensor.name!r} has dims {tensor.dims}; the metadata names {len(classes)} classes")
        if rule == ("classes",):  # one score per class: the classification extension (class_count) labels them
            item["label_filename"] = LABELS
        return item

    kind = Enum("KIND_GPU" if options.kind == "gpu" else "KIND_CPU")
    warm_batches = [1] if options.kind == "cpu" or batch == 1 else [1, batch]  # CUDA picks kernels per shape
    warmup = [
        {
            "name": f"zero_image_batch_{size}",
            "batch_size": size,
            "inputs": [
                {"key": t.name, "value": {"data_type": Enum(t.data_type), "dims": list(t.dims), "zero_data": True}}
                for t in inputs
            ],
        }
        for size in warm_batches
    ]
    if any(d < 0 for t in inputs for d in t.dims):
        raise ValueError(f"inputs {inputs} have variable axes besides the batch; a zero warm-up image needs a size")
    threads = {
        "intra_op_thread_count": options.default("intra_op_threads"),
        "inter_op_thread_count": options.inter_op_threads,
    }
    return {
        "name": name,
        "platform": PLATFORM,
        "max_batch_size": batch,
        "version_policy": {"specific": {"versions": [options.version]}},
        "input": [entry(t) for t in inputs],
        "output": [output_entry(t) for t in outputs],
        "instance_group": [{"count": options.instances, "kind": kind}],
        "dynamic_batching": {
            "max_queue_delay_microseconds": options.batch_delay_us,
            "default_queue_policy": {
                "timeout_action": Enum("REJECT"),
                "default_timeout_microseconds": options.request_timeout_ms * 1000,
                "allow_timeout_override": True,
                "max_queue_size": options.default("max_queue"),
            },
        },
        "parameters": [{"key": k, "value": {"string_value": str(v)}} for k, v in threads.items()],
        "model_warmup": warmup,
    }


def _scalar(value: object) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"cannot write {value!r} in the protobuf text format")


def to_pbtxt(message: dict, indent: int = 0) -> str:
    """``message`` in the protobuf text format: dicts are messages, lists repeated fields (maps as key/value)."""
    pad, lines = "  " * indent, []
    for field, value in message.items():
        if isinstance(value, dict):
            lines += [f"{pad}{field} {{", to_pbtxt(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            blocks = [f"{pad}  {{\n{to_pbtxt(item, indent + 2)}\n{pad}  }}" for item in value]
            lines += [f"{pad}{field} [", ",\n".join(blocks), f"{pad}]"]
        elif isinstance(value, list):
            lines.append(f"{pad}{field}: [ {', '.join(_scalar(item) for item in value)} ]")
        else:
            lines.append(f"{pad}{field}: {_scalar(value)}")
    return "\n".join(lines)


def write_repository(model: str | Path, out: str | Path, options: TritonOptions | None = None) -> Path:
    """Writes the model folder for ``model`` into the repository ``out``; returns the folder."""
    options = options or TritonOptions()
    model = Path(model)
    if not model.is_file():
        raise FileNotFoundError(f"no model file at {model}; export one first (python -m export.to_onnx)")
    proto = onnx.load(str(model), load_external_data=False)
    props = metadata.read(proto)
    name = options.name or props.get(contract.NAME_KEY) or model.stem
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"model name {name!r} is not a folder name; pass --name")
    config = model_config(proto, options, name)
    folder = Path(out) / name
    with atomic_write(folder / str(options.version) / MODEL) as file, model.open("rb") as source:
        shutil.copyfileobj(source, file, 1 << 20)
    with atomic_write(folder / LABELS) as file:
        file.write("".join(f"{label}\n" for label in labels(props)).encode())
    # The configuration last: a Triton polling the repository sees the folder complete once it has one.
    with atomic_write(folder / CONFIG) as file:
        file.write(f"# {name}: written by python -m export.triton from {model.name}\n{to_pbtxt(config)}\n".encode())
    log.info("wrote the Triton model %s (%s instances) to %s", name, options.kind, folder)
    return folder


def parse_args(argv: list[str] | None = None) -> tuple[str, str, TritonOptions]:
    parser = command_parser("export.triton", __doc__, TritonOptions)
    parser.add_argument("--model", default="models/castream.onnx", help="castream ONNX file")
    parser.add_argument(
        "--out", required=True, help="model repository folder (Triton's --model-repository, KServe's storageUri)"
    )
    args = parser.parse_args(argv)
    return args.model, args.out, from_args(parser, TritonOptions, args)


def main(argv: list[str] | None = None) -> int:
    model, out, options = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        folder = write_repository(model, out, options)
    except (ValueError, FileNotFoundError) as error:
        log.error("%s", error)
        return 2
    print(f"wrote {folder} ({CONFIG}, {LABELS}, {options.version}/{MODEL}); serve it with "
          f"tritonserver --model-repository={Path(out)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
