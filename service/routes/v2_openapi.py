"""What ``/docs`` and ``/openapi.json`` say of the Open Inference Protocol routes (``service.routes.v2``):
the probes' bodies, the error answers, and the ``infer`` request with an example."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from service.codecs.v2 import IMAGE_BYTES
from service.contract import ATTENTION, INPUT, LOGITS, OUTPUT_NAMES
from service.schemas import ProtocolErrorBody


# The probes answer with their status code, as the protocol says; the bodies are those of KServe's own server,
# which its SDK (``kserve.InferenceRESTClient``) reads.
class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


ERROR: dict[str, Any] = {"model": ProtocolErrorBody}
FALSE: dict[int | str, dict[str, Any]] = {400: {**ERROR, "description": "false, and why"}}
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
        "name": {"type": "string", "enum": [INPUT, IMAGE_BYTES]},
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
        "name": {"type": "string", "enum": list(OUTPUT_NAMES)},
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
                    "inputs": [{"name": IMAGE_BYTES, "datatype": "BYTES", "shape": [1], "data": ["<base64 PNG>"]}],
                    "outputs": [{"name": LOGITS, "parameters": {"classification": 3}}, {"name": ATTENTION}],
                },
            }
        },
    }
}
