"""``POST /classify``: images in, top-k labels and attention maps out."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from service.codecs.classify import DEFAULT, OVERLAY_SIDES, TOP_K_MAX, classify_codec
from service.deps import ServingDep
from service.errors import ErrorBody
from service.inputs import ImagesJSON
from service.schemas import AttentionMode, ClassifyResponse, OverlayArea, OverlayFormat

router = APIRouter(tags=["inference"])

_FILES = {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1}
BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": _FILES}, "required": ["file"]},
            },
            "application/json": {"schema": ImagesJSON.model_json_schema()},
        },
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "empty body, undecodable image, bad multipart or JSON"},
    401: {"model": ErrorBody, "description": "missing or wrong bearer token (only with CASTREAM_API_KEY)"},
    408: {"model": ErrorBody, "description": "the body did not arrive within CASTREAM_BODY_TIMEOUT_S"},
    413: {"model": ErrorBody, "description": "too many bytes, images or pixels"},
    415: {"model": ErrorBody, "description": "wrong Content-Type or not a supported image format"},
    422: {
        "model": ErrorBody,
        "description": "invalid options or JSON fields; no_class_maps: the model has none; unknown_label: explain=",
    },
    503: {"model": ErrorBody, "description": "queue full or not ready; see Retry-After"},
    504: {"model": ErrorBody, "description": "waited in the queue past CASTREAM_REQUEST_TIMEOUT_MS"},
}


@router.post("/classify", response_model=ClassifyResponse, responses=ERRORS, openapi_extra=BODY)
async def classify(
    request: Request,
    serving: ServingDep,
    top_k: Annotated[
        int, Query(ge=1, le=TOP_K_MAX, description="labels per image (at most the class count)")
    ] = DEFAULT.top_k,
    attention: Annotated[AttentionMode, Query(description="none, grid, or overlay (grid + PNG)")] = DEFAULT.attention,
    class_maps: Annotated[
        bool, Query(description="add each top-k class's map (logit units) as `map`")
    ] = DEFAULT.class_maps,
    explain: Annotated[
        list[str] | None, Query(description="class labels to explain even outside the top k (repeatable)")
    ] = None,
    overlay_on: Annotated[
        OverlayArea, Query(description="overlays over the crop the model saw, or over the whole image")
    ] = DEFAULT.overlay_on,
    overlay_size: Annotated[
        int,
        Query(
            ge=OVERLAY_SIDES[0],
            le=OVERLAY_SIDES[1],
            description="whole-image overlays: pixels on the longer side, at most",
        ),
    ] = DEFAULT.overlay_size,
    overlay_format: Annotated[
        OverlayFormat, Query(description="png, or jpeg and webp (smaller and faster)")
    ] = DEFAULT.overlay_format,
    embedding: Annotated[bool, Query(description="add each image's embedding (the pooled vector)")] = DEFAULT.embedding,
) -> Response:
    """Classify one or more images sent as multipart files (field ``file``, repeatable) or JSON base64.

    A plainly valid request is answered by ``service.direct`` with this same code, without the per-request work
    of this framework; this route answers the others and documents the API."""
    codec = classify_codec(
        serving, top_k, attention, class_maps, explain, overlay_on, overlay_size, overlay_format, embedding
    )
    return await serving.handle(request, codec)
