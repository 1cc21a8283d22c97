"""The Open Inference Protocol (KServe v2) over HTTP: request parsing and response encoding.

Tensors travel as JSON (``data`` as a flat or nested list) or, with the binary tensor extension, as raw
little-endian bytes after the JSON header (``Inference-Header-Content-Length`` gives the header's size and
each tensor's ``parameters.binary_data_size`` its share). BYTES elements are length-prefixed in binary
(4-byte little-endian length, then the bytes) and base64 strings in JSON, as MLServer's ``base64``
content type (``parameters.content_type: "str"`` takes the strings' UTF-8 bytes instead).
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"
DTYPES = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "FP16": np.dtype("<f2")}


class ProtocolError(ValueError):
    """A request the protocol cannot accept: answered ``{"error": message}`` with ``status``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Tensor:
    """One request input: ``values`` is an array for numeric types, a list of byte strings for BYTES (views into the
    request's body where it came with the binary extension)."""

    name: str
    datatype: str
    shape: list[int]
    values: np.ndarray | list[bytes] | list[memoryview]


@dataclass
class Requested:
    """One requested output: its name, whether it comes back as binary, and a classification count."""

    name: str
    binary: bool = False
    classification: int = 0


@dataclass
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    outputs: list[Requested] | None  # None: every output, with default settings
    binary_outputs: bool = False  # request-level ``binary_data_output``
    parameters: dict[str, Any] = field(default_factory=dict)


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _shape(tensor: dict[str, Any], where: str) -> list[int]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"{where}.shape must be a list of non-negative integers, got {shape!r}")
    return shape


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    for item in data:
        out.extend(_flatten(item) if isinstance(item, list) else [item])
    return out


def _split_bytes(raw: memoryview, where: str) -> list[memoryview]:
    """Length-prefixed BYTES elements of the binary extension, as views of ``raw``: a photo is not copied."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError(f"{where}: binary BYTES data ends inside an element's 4-byte length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise ProtocolError(f"{where}: a BYTES element claims {size} bytes but only {len(raw) - offset} remain")
        elements.append(raw[offset : offset + size])
        offset += size
    return elements


def _json_bytes(values: list[Any], content_type: str, where: str) -> list[bytes]:
    if not all(isinstance(v, str) for v in values):
        raise ProtocolError(f"{where}: BYTES data in JSON must be strings")
    if content_type == "str":
        return [v.encode() for v in values]
    try:
        return [base64.b64decode("".join(v.split()), validate=True) for v in values]
    except (binascii.Error, ValueError):
        raise ProtocolError(
            f"{where}: BYTES data is not valid base64 (send parameters.content_type 'str' for text)"
        ) from None


def _tensor(raw: dict[str, Any], index: int, binary: memoryview, offset: int) -> tuple[Tensor, int]:
    where = f"inputs[{index}]"
    name, datatype = raw.get("name"), raw.get("datatype")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise ProtocolError(f"{where} needs a string 'name' and 'datatype'")
    shape = _shape(raw, where)
    count = int(np.prod(shape)) if shape else 1
    parameters = _object(raw.get("parameters", {}), f"{where}.parameters")
    size = parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            left = len(binary) - offset
            raise ProtocolError(f"{where}: binary_data_size {size!r} does not fit the {left} bytes left")
        chunk, offset = binary[offset : offset + size], offset + size
    elif "data" not in raw:
        raise ProtocolError(f"{where} ({name!r}) has neither 'data' nor parameters.binary_data_size")
    if datatype == "BYTES":
        if size is not None:
            values: np.ndarray | list[bytes] | list[memoryview] = _split_bytes(chunk, where)
        else:
            values = _json_bytes(_flatten(raw["data"]), str(parameters.get("content_type", "base64")), where)
        if len(values) != count:
            raise ProtocolError(f"{where} ({name!r}) has {len(values)} elements; its shape {shape} needs {count}")
        return Tensor(name, datatype, shape, values), offset
    if datatype not in DTYPES:
        raise ProtocolError(f"{where} ({name!r}) has datatype {datatype!r}; expected one of {sorted(DTYPES)} or BYTES")
    dtype = DTYPES[datatype]
    if size is not None:
        if size != count * dtype.itemsize:
            raise ProtocolError(f"{where} ({name!r}): {size} bytes for shape {shape} of {datatype}")
        array = np.frombuffer(chunk, dtype).copy()  # aligned, and the body is not kept alive by it
    else:
        flat = _flatten(raw["data"])
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in flat):
            raise ProtocolError(f"{where} ({name!r}): {datatype} data must be numbers")
        array = np.asarray(flat, dtype)
        if array.size != count:
            raise ProtocolError(f"{where} ({name!r}) has {array.size} values; its shape {shape} needs {count}")
    return Tensor(name, datatype, shape, array.reshape(shape)), offset


def _requested(raw: dict[str, Any], index: int) -> Requested:
    where = f"outputs[{index}]"
    name = raw.get("name")
    if not isinstance(name, str):
        raise ProtocolError(f"{where} needs a string 'name'")
    parameters = _object(raw.get("parameters", {}), f"{where}.parameters")
    count = parameters.get("classification", 0)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ProtocolError(f"{where}.parameters.classification must be a non-negative integer, got {count!r}")
    return Requested(name, bool(parameters.get("binary_data", False)), count)


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """The request in ``body``; ``header_length`` is the Inference-Header-Content-Length header, if any."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {header_length!r} does not fit a body of {len(body)} bytes")
        split = int(header_length)
    else:
        split = len(body)
    try:
        raw = _object(json.loads(body[:split]), "the request")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"the request is not valid JSON: {exc}") from None
    inputs = raw.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("the request needs a non-empty 'inputs' list")
    binary, offset, tensors = memoryview(body)[split:], 0, []
    for index, item in enumerate(inputs):
        tensor, offset = _tensor(_object(item, f"inputs[{index}]"), index, binary, offset)
        tensors.append(tensor)
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes after the header belong to no input")
    outputs = raw.get("outputs")
    if outputs is not None and not isinstance(outputs, list):
        raise ProtocolError("'outputs' must be a list")
    request_id = raw.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(f"'id' must be a string, got {request_id!r}")
    parameters = _object(raw.get("parameters", {}), "parameters")
    requested = None if outputs is None else [_requested(_object(o, f"outputs[{i}]"), i) for i, o in enumerate(outputs)]
    return InferRequest(
        id=request_id,
        inputs=tensors,
        outputs=requested,
        binary_outputs=bool(parameters.get("binary_data_output", False)),
        parameters=parameters,
    )


def classification(logits: np.ndarray, count: int, classes: tuple[str, ...]) -> np.ndarray:
    """The classification extension: [N, count] strings ``"value:index:label"``, highest value first."""
    count = min(count, logits.shape[-1])
    order = np.argsort(-logits, axis=-1, kind="stable")[:, :count]
    rows = [[f"{row[i]:f}:{i}:{classes[i]}" for i in picks] for row, picks in zip(logits, order, strict=True)]
    return np.array(rows, dtype=object).reshape(len(logits), count)


def _encode_bytes(values: np.ndarray) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in (str(x).encode() for x in values.flat))


def encode_response(
    model: str, version: str, request_id: str | None, outputs: list[tuple[str, np.ndarray, bool]]
) -> tuple[bytes, dict[str, str]]:
    """Body and extra headers for ``outputs`` as ``(name, array, binary)``; BYTES arrays hold Python strings."""
    header: dict[str, Any] = {"model_name": model, "model_version": version}
    if request_id is not None:
        header["id"] = request_id
    tensors, chunks = [], []
    for name, array, binary in outputs:
        datatype = "BYTES" if array.dtype == object else "FP32"
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            chunk = _encode_bytes(array) if datatype == "BYTES" else np.ascontiguousarray(array, "<f4").tobytes()
            tensor["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            tensor["data"] = [str(v) for v in array.flat] if datatype == "BYTES" else array.ravel().tolist()
        tensors.append(tensor)
    header["outputs"] = tensors
    text = json.dumps(header, separators=(",", ":")).encode()
    if not chunks:
        return text, {}
    return text + b"".join(chunks), {HEADER_LENGTH: str(len(text))}
