"""The Open Inference Protocol (KServe v2) beside the native API: health, metadata and ``infer``.

Requests go through the same pipeline, limits, batcher, metrics and bearer token as ``POST /classify``; the
protocol's part of ``infer`` is its codec (``service.codecs.v2``). The probes answer with their status code, as
the protocol says, and with the JSON bodies of KServe's own server (``{"live": true}``, ``{"ready": true}``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse

from service.codecs.v2 import IMAGE_BYTES, InferCodec, listed_outputs
from service.contract import INPUT, VERSION
from service.deps import LifecycleDep, ServingDep
from service.errors import ServiceError
from service.lifecycle import Phase
from service.requestid import with_request_id
from service.routes.v2_openapi import ERROR, ERRORS, FALSE, INFER_BODY, INFER_OK, ModelReady, ServerLive, ServerReady
from service.serving import Serving

EXTENSIONS = ["classification", "binary_tensor_data"]
PLATFORM = "onnxruntime_onnx"

router = APIRouter(prefix="/v2", tags=["open inference protocol"])
infer_router = APIRouter(prefix="/v2", tags=["open inference protocol"])

ModelName = Annotated[str, Path(description="the served model's name (GET /v2/models/{name} or /v1/model)")]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(with_request_id({"error": message}), status_code=status)


def _check_name(serving: Serving, name: str, version: str | None) -> None:
    """404 unless ``name`` (and ``version``, if given) is the model served."""
    info = serving.model.info
    if name != info.name or (version not in (None, "") and version != info.version):
        wanted = name if version in (None, "") else f"{name}/{version}"
        raise ServiceError(404, "unknown_model", f"unknown model {wanted!r}; this server serves {info.name!r}")


@router.get("")
async def server_metadata() -> JSONResponse:
    """Server metadata: name, version and the protocol extensions supported."""
    return JSONResponse({"name": "castream", "version": VERSION, "extensions": EXTENSIONS})


@router.get("/health/live", response_model=ServerLive, responses=FALSE)
async def live(lifecycle: LifecycleDep) -> JSONResponse:
    """200 while the process can serve (as ``/healthz``); 400 (the protocol's false) once warm-up failed."""
    if lifecycle.phase is Phase.failed:
        return _error(400, "model warm-up failed; see the log")
    return JSONResponse({"live": True})


@router.get("/health/ready", response_model=ServerReady, responses=FALSE)
async def ready(lifecycle: LifecycleDep) -> JSONResponse:
    """200 once the model is loaded and warmed up (as ``/readyz``); 400 (the protocol's false) otherwise."""
    phase = lifecycle.phase
    if phase is not Phase.ready:
        return _error(400, f"not ready: {phase}")
    return JSONResponse({"ready": True})


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
    return JSONResponse({**body, "outputs": listed_outputs(serving.model)})


@router.get("/models/{model_name}/ready", response_model=ModelReady, responses={**FALSE, 404: ERROR, 503: ERROR})
@router.get("/models/{model_name}/versions/{model_version}/ready", include_in_schema=False)
async def model_ready(
    serving: ServingDep, lifecycle: LifecycleDep, model_name: ModelName, model_version: str | None = None
) -> JSONResponse:
    """200 when this model is ready to infer; 400 while it drains (503 while it warms up)."""
    _check_name(serving, model_name, model_version)
    phase = lifecycle.phase
    if phase is not Phase.ready:
        return _error(400, f"not ready: {phase}")
    return JSONResponse({"name": model_name, "ready": True})


@infer_router.post(
    "/models/{model_name}/infer", response_class=Response, responses={200: INFER_OK, **ERRORS}, openapi_extra=INFER_BODY
)
@infer_router.post("/models/{model_name}/versions/{model_version}/infer", include_in_schema=False)
async def infer(
    request: Request, serving: ServingDep, model_name: ModelName, model_version: str | None = None
) -> Response:
    """Run the model on one input tensor: ``image`` FP32 [N, 3, H, W] or ``image_bytes`` BYTES [N].

    Outputs: the model's (``GET /v2/models/{name}`` lists them; docs/onnx-model.md has the table), such as
    ``logits`` [N, classes] or ``embedding`` [N, width], as the request's ``outputs`` list asks (all of them when
    it has none); ``parameters.classification: k`` on ``logits`` returns its top k as ``"value:index:label"``
    strings.
    """
    _check_name(serving, model_name, model_version)
    return await serving.handle(request, InferCodec(serving))
