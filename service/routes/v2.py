"""The Open Inference Protocol (KServe v2) beside the native API: health, metadata and ``infer``.

Requests go through the same limits, batcher, metrics and bearer token as ``POST /classify``. The model
takes either a preprocessed FP32 ``image`` tensor [N, 3, crop, crop] or encoded image files as BYTES
(input ``image_bytes``, or ``image`` with datatype BYTES), decoded and preprocessed like ``/classify``.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse

from service import timings
from service.contract import ATTENTION, CLASS_MAPS, INPUT, LOGITS, VERSION
from service.deps import LifecycleDep, ServingDep
from service.errors import ServiceError
from service.inputs import read_body
from service.lifecycle import Phase
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
from service.requestid import current_request_id, with_request_id
from service.schemas import ProtocolErrorBody
from service.serving import Serving

IMAGE_BYTES = "image_bytes"
EXTENSIONS = ["classification", "binary_tensor_data"]
PLATFORM = "onnxruntime_onnx"

router = APIRouter(prefix="/v2", tags=["open inference protocol"])
infer_router = APIRouter(prefix="/v2", tags=["open inference protocol"])

ModelName = Annotated[str, Path(description="the served model's name (GET /v2/models/{name} or /v1/model)")]
ERROR: dict[str, Any] = {"model": ProtocolErrorBody}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {**ERROR, "description": "malformed request, unknown input or output"},
    401: {**ERROR, "description": "missing or wrong bearer token (only with CASTREAM_API_KEY)"},
    404: {**ERROR, "description": "no such model or version"},
    408: {**ERROR, "description": "the body did not arrive within CASTREAM_BODY_TIMEOUT_S"},
    413: {**ERROR, "description": "too many bytes, images or pixels"},
    415: {**ERROR, "description": "an encoded image is not a supported format"},
    503: {**ERROR, "description": "not ready, or the queue is full; see Retry-After"},
    504: {**ERROR, "description": "waited in the queue past CASTREAM_REQUEST_TIMEOUT_MS"},
}
INFER_OK: dict[str, Any] = {
    "description": "the outputs; with binary outputs, the JSON header then raw bytes (Inference-Header-Content-Length)",
    "content": {"application/json": {}, "application/octet-stream": {}},
}
_TENSOR = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "enum": [INPUT, "image_bytes"]},
        "datatype": {"type": "string", "enum": ["FP32", "BYTES"]},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "data": {"type": "array", "description": "flat or nested; BYTES as base64 strings"},
        "parameters": {"type": "object"},
    },
    "required": ["name", "datatype", "shape"],
}
_OUTPUT = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "enum": [LOGITS, ATTENTION, CLASS_MAPS]},
        "parameters": {
            "type": "object",
            "properties": {"classification": {"type": "integer", "minimum": 0}, "binary_data": {"type": "boolean"}},
        },
    },
    "required": ["name"],
}
INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "inputs": {"type": "array", "items": _TENSOR, "minItems": 1, "maxItems": 1},
                        "outputs": {"type": "array", "items": _OUTPUT},
                        "parameters": {"type": "object"},
                    },
                    "required": ["inputs"],
                },
                "example": {
                    "id": "1",
                    "inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": ["<base64 PNG>"]}],
                    "outputs": [{"name": LOGITS, "parameters": {"classification": 3}}, {"name": ATTENTION}],
                },
            }
        },
    }
}
EMPTY: dict[int | str, dict[str, Any]] = {200: {"description": "true (the body is empty)", "content": {}}}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(with_request_id({"error": message}), status_code=status)


def _check_name(serving: Serving, name: str, version: str | None) -> None:
    """404 unless ``name`` (and ``version``, if given) is the model served."""
    info = serving.model.info
    if name != info.name or (version not in (None, "") and version != info.version):
        wanted = name if version in (None, "") else f"{name}/{version}"
        raise ServiceError(404, "unknown_model", f"unknown model {wanted!r}; this server serves {info.name!r}")


def _outputs(serving: Serving) -> list[dict[str, Any]]:
    model = serving.model
    classes, grid = len(model.info.classes), list(model.attention_shape or (-1, -1))
    outputs = [{"name": LOGITS, "datatype": "FP32", "shape": [-1, classes]}]
    if model.info.has_attention:
        outputs.append({"name": ATTENTION, "datatype": "FP32", "shape": [-1, *grid]})
    if model.has_class_maps:
        outputs.append({"name": CLASS_MAPS, "datatype": "FP32", "shape": [-1, classes, *grid]})
    return outputs


@router.get("")
async def server_metadata() -> JSONResponse:
    """Server metadata: name, version and the protocol extensions supported."""
    return JSONResponse({"name": "castream", "version": VERSION, "extensions": EXTENSIONS})


@router.get("/health/live", response_class=Response, responses={**EMPTY, 400: ERROR})
async def live(lifecycle: LifecycleDep) -> Response:
    """200 while the process can serve (as ``/healthz``)."""
    if lifecycle.phase is Phase.failed:
        return _error(400, "model warm-up failed; see the log")
    return Response(status_code=200)


@router.get("/health/ready", response_class=Response, responses={**EMPTY, 400: ERROR})
async def ready(lifecycle: LifecycleDep) -> Response:
    """200 once the model is loaded and warmed up (as ``/readyz``); 400 (the protocol's false) otherwise."""
    phase = lifecycle.phase
    return Response(status_code=200) if phase is Phase.ready else _error(400, f"not ready: {phase}")


@router.get("/models/{model_name}", responses={404: ERROR, 503: ERROR})
@router.get("/models/{model_name}/versions/{model_version}", responses={404: ERROR}, include_in_schema=False)
async def model_metadata(serving: ServingDep, model_name: ModelName, model_version: str | None = None) -> JSONResponse:
    """Model metadata: its inputs and outputs with datatypes and shapes (-1: any size)."""
    _check_name(serving, model_name, model_version)
    info, crop = serving.model.info, serving.model.info.preprocessing.crop
    inputs = [
        {"name": INPUT, "datatype": "FP32", "shape": [-1, 3, crop, crop]},
        {"name": IMAGE_BYTES, "datatype": "BYTES", "shape": [-1]},
    ]
    body = {"name": info.name, "versions": [info.version], "platform": PLATFORM, "inputs": inputs}
    return JSONResponse({**body, "outputs": _outputs(serving)})


@router.get(
    "/models/{model_name}/ready", response_class=Response, responses={**EMPTY, 400: ERROR, 404: ERROR, 503: ERROR}
)
@router.get("/models/{model_name}/versions/{model_version}/ready", include_in_schema=False)
async def model_ready(
    serving: ServingDep, lifecycle: LifecycleDep, model_name: ModelName, model_version: str | None = None
) -> Response:
    """200 when this model is ready to infer; 400 while it drains (503 while it warms up)."""
    _check_name(serving, model_name, model_version)
    phase = lifecycle.phase
    return Response(status_code=200) if phase is Phase.ready else _error(400, f"not ready: {phase}")


async def _model_inputs(serving: Serving, tensor: Tensor) -> list[np.ndarray]:
    """Model inputs [3, crop, crop] from one request tensor: preprocessed floats or encoded image files."""
    s, crop = serving.settings, serving.model.info.preprocessing.crop
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
        images = [(f"{tensor.name}[{i}]", data) for i, data in enumerate(tensor.values)]
        return [p.input for p in await serving.prepare(images)]
    if tensor.name != INPUT or tensor.shape[1:] != [3, crop, crop]:
        raise ProtocolError(
            f"input {tensor.name!r} {tensor.datatype} {tensor.shape}: expected {INPUT!r} FP32 [N, 3, {crop}, {crop}] "
            f"(normalised as /v1/model's preprocessing says) or {IMAGE_BYTES!r} BYTES [N] (encoded image files)"
        )
    assert isinstance(tensor.values, np.ndarray)
    array = np.ascontiguousarray(tensor.values, np.float32)
    if not np.isfinite(array).all():
        raise ProtocolError(f"input {INPUT!r} holds NaN or infinite values")
    return list(array)


def _wanted(request: InferRequest, serving: Serving) -> list[Requested]:
    available = [o["name"] for o in _outputs(serving)]
    if request.outputs is None:
        return [Requested(name, request.binary_outputs) for name in available]
    for output in request.outputs:
        if output.name not in available:
            missing = (
                f"model {serving.model.info.name!r} has no class maps (GAP pooling, or exported before them)"
                if output.name == CLASS_MAPS
                else f"unknown output {output.name!r}"
            )
            raise ProtocolError(f"{missing}; this model's outputs are {available}")
        if output.classification and output.name != LOGITS:
            raise ProtocolError(f"classification applies to {LOGITS!r} only, not {output.name!r}")
    return request.outputs


@infer_router.post(
    "/models/{model_name}/infer", response_class=Response, responses={200: INFER_OK, **ERRORS}, openapi_extra=INFER_BODY
)
@infer_router.post("/models/{model_name}/versions/{model_version}/infer", include_in_schema=False)
async def infer(
    request: Request, serving: ServingDep, model_name: ModelName, model_version: str | None = None
) -> Response:
    """Run the model on one input tensor: ``image`` FP32 [N, 3, H, W] or ``image_bytes`` BYTES [N].

    Outputs: ``logits`` [N, classes], ``attention`` [N, h, w] and ``class_maps`` [N, classes, h, w] as the
    request's ``outputs`` list asks (all of them when it has none); ``parameters.classification: k`` on
    ``logits`` returns its top k as ``"value:index:label"`` strings.
    """
    _check_name(serving, model_name, model_version)
    serving.check_room()  # under overload, refused here, before the body is read; nothing is held meanwhile
    body = await read_body(request, serving.settings.max_request_bytes, serving.settings.body_timeout_s)
    with serving.admit() as ticket:  # room reserved once the body is in (503 if it went meanwhile), sized at submit
        try:
            parsed = parse_request(body, request.headers.get(HEADER_LENGTH))
            if len(parsed.inputs) != 1:
                raise ProtocolError(f"send exactly one input ({INPUT!r} or {IMAGE_BYTES!r}), got {len(parsed.inputs)}")
            wanted = _wanted(parsed, serving)
            inputs = await _model_inputs(serving, parsed.inputs[0])
        except ProtocolError as exc:
            raise ServiceError(exc.status, "invalid_request", str(exc)) from None
        results = await serving.infer(ticket, inputs, class_maps=any(o.name == CLASS_MAPS for o in wanted))
    info = serving.model.info
    arrays = {
        LOGITS: np.stack([r.logits for r in results]),
        ATTENTION: np.stack([r.attention for r in results]) if info.has_attention else None,
        CLASS_MAPS: np.stack([r.class_maps for r in results]) if results[0].class_maps is not None else None,
    }
    outputs = []
    for output in wanted:
        array = arrays[output.name]
        assert array is not None
        if output.classification:
            array = classification(array, output.classification, info.classes)
        outputs.append((output.name, array, output.binary or parsed.binary_outputs))
    with timings.stage("encode"):
        content, headers = encode_response(
            info.name, info.version, parsed.id if parsed.id is not None else current_request_id(), outputs
        )
    media = "application/octet-stream" if headers else "application/json"
    return Response(content, media_type=media, headers=headers)
