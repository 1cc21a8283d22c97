"""The Open Inference Protocol's ``infer``: one input tensor in, the requested output tensors out.

The model takes either a preprocessed FP32 ``image`` tensor [N, 3, crop, crop] or encoded image files as BYTES
(input ``image_bytes``, or ``image`` with datatype BYTES), decoded and preprocessed like ``/classify``. The wire
format (JSON or the binary tensor extension) is ``service.oip``'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import Request, Response

from service.contract import INPUT, LOGITS
from service.errors import ServiceError
from service.inputs import read_body
from service.model import ImageOutput, OnnxModel
from service.oip import (
    HEADER_LENGTH,
    InferRequest,
    ProtocolError,
    Requested,
    Tensor,
    classification,
    encode_response,
    parse_request,
)
from service.preprocess import Prepared
from service.requestid import current_request_id
from service.serving import Serving, Work

IMAGE_BYTES = "image_bytes"
DATATYPES = {"float32": "FP32"}  # the contract's dtypes as the protocol names them


def listed_outputs(model: OnnxModel) -> list[dict[str, Any]]:
    """The model's outputs as the protocol's metadata lists them: name, datatype and shape (-1: any size)."""
    return [
        {"name": o.name, "datatype": DATATYPES[o.dtype], "shape": [-1 if d is None else d for d in o.shape]}
        for o in model.listing()
    ]


def _stacked(results: list[ImageOutput], name: str) -> np.ndarray:
    """Output ``name`` of every image, as one array with the batch first."""
    return np.stack([r[name] for r in results])


class InferCodec:
    """``POST /v2/models/{name}/infer`` of the model ``serving`` serves."""

    def __init__(self, serving: Serving):
        self.serving = serving
        self.parsed: InferRequest | None = None
        self.wanted: list[Requested] = []

    async def read(self, request: Request) -> Work:
        s = self.serving.settings
        body = await read_body(request, s.max_request_bytes, s.body_timeout_s)
        try:
            self.parsed = parse_request(body, request.headers.get(HEADER_LENGTH))
            if len(self.parsed.inputs) != 1:
                got = len(self.parsed.inputs)
                raise ProtocolError(f"send exactly one input ({INPUT!r} or {IMAGE_BYTES!r}), got {got}")
            self.wanted = self._wanted(self.parsed)
            work = self._work(self.parsed.inputs[0])
        except ProtocolError as exc:
            raise ServiceError(exc.status, "invalid_request", str(exc)) from None
        work.outputs = frozenset(o.name for o in self.wanted)
        return work

    def encode(self, outputs: list[ImageOutput], prepared: list[Prepared] | None) -> Response:
        assert self.parsed is not None
        info, parsed = self.serving.model.info, self.parsed
        tensors = []
        for output in self.wanted:
            array = _stacked(outputs, output.name)
            if output.classification:
                array = classification(array, output.classification, info.classes)
            tensors.append((output.name, array, output.binary or parsed.binary_outputs))
        request_id = parsed.id if parsed.id is not None else current_request_id()
        content, headers = encode_response(info.name, info.version, request_id, tensors)
        media = "application/octet-stream" if headers else "application/json"
        return Response(content, media_type=media, headers=headers)

    def _wanted(self, request: InferRequest) -> list[Requested]:
        model = self.serving.model
        available = list(model.outputs)
        if request.outputs is None:
            return [Requested(name, request.binary_outputs) for name in available]
        for output in request.outputs:
            missing = model.lacks(output.name)
            if missing is not None:
                raise ProtocolError(f"{missing}; this model's outputs are {available}")
            if output.classification and output.name != LOGITS:
                raise ProtocolError(f"classification applies to {LOGITS!r} only, not {output.name!r}")
        return request.outputs

    def _work(self, tensor: Tensor) -> Work:
        """The images of one request tensor: encoded files to decode, or preprocessed model inputs."""
        s, crop = self.serving.settings, self.serving.model.info.preprocessing.crop
        count = tensor.shape[0] if tensor.shape else 0
        if count > s.max_images_per_request:
            raise ServiceError(
                413,
                "too_many_images",
                f"{count} images in one request, over the limit of {s.max_images_per_request} "
                "(CASTREAM_MAX_IMAGES_PER_REQUEST); split the request",
            )
        if count == 0:
            raise ProtocolError(f"input {tensor.name!r} holds no images (shape {tensor.shape})")
        if tensor.datatype == "BYTES":
            if len(tensor.shape) != 1:
                raise ProtocolError(f"input {tensor.name!r}: encoded images take shape [N], got {tensor.shape}")
            assert isinstance(tensor.values, list)
            return Work(files=[(f"{tensor.name}[{i}]", data) for i, data in enumerate(tensor.values)])
        if tensor.name != INPUT or tensor.shape[1:] != [3, crop, crop]:
            got = f"input {tensor.name!r} {tensor.datatype} {tensor.shape}"
            raise ProtocolError(
                f"{got}: expected {INPUT!r} FP32 [N, 3, {crop}, {crop}] (normalised as /v1/model's preprocessing says) "
                f"or {IMAGE_BYTES!r} BYTES [N] (encoded image files)"
            )
        assert isinstance(tensor.values, np.ndarray)
        array = np.ascontiguousarray(tensor.values, np.float32)
        if not np.isfinite(array).all():
            raise ProtocolError(f"input {INPUT!r} holds NaN or infinite values")
        return Work(inputs=list(array))
