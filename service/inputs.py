"""Reading the images of a ``POST /classify`` body: multipart files or JSON base64, within byte limits."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import AsyncGenerator
from typing import Annotated

from fastapi import Request
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from service.errors import ServiceError
from service.formdata import FIELD, MAX_PARTS, form_files

MULTIPART, JSON = "multipart/form-data", "application/json"


class ImagesJSON(BaseModel):
    """JSON body of ``POST /classify``: base64 images, optionally as ``data:`` URLs."""

    images: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1, description="base64-encoded image files")


async def read_images(
    request: Request, max_bytes: int, max_images: int, timeout_s: float | None = None
) -> list[tuple[str, bytes | memoryview]]:
    """``(name, data)`` per image, in order; raises :class:`ServiceError` for anything unusable."""
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    if media not in (MULTIPART, JSON):
        raise ServiceError(
            415,
            "unsupported_content_type",
            f"Content-Type {content_type or '(none)'!r} is not accepted; send {MULTIPART} with files named 'file' "
            f'or {JSON} like {{"images": ["<base64>"]}}',
        )
    body = await read_body(request, max_bytes, timeout_s)
    if not body:
        raise ServiceError(400, "empty_body", "the request body is empty; send at least one image")
    images = parse_json(body) if media == JSON else await parse_multipart(request, body)
    if not images:
        raise ServiceError(422, "no_images", "no images found; send form files named 'file' or a JSON 'images' list")
    if len(images) > max_images:
        raise ServiceError(
            413,
            "too_many_images",
            f"{len(images)} images in one request, over the limit of {max_images} "
            "(CASTREAM_MAX_IMAGES_PER_REQUEST); split the request",
        )
    return images


async def read_body(request: Request, max_bytes: int, timeout_s: float | None = None) -> bytes:
    """The body, refused as soon as its declared or received length passes ``max_bytes``, or when it has not
    all arrived within ``timeout_s`` (408: a client trickling its body holds no connection for long)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise _too_large(max_bytes)
                chunks.append(chunk)
    except ClientDisconnect:
        raise ServiceError(400, "incomplete_body", f"the client disconnected after {size} bytes") from None
    except TimeoutError:
        raise ServiceError(
            408,
            "body_timeout",
            f"the body did not arrive within {timeout_s} s (CASTREAM_BODY_TIMEOUT_S); got {size} bytes",
        ) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(max_bytes: int) -> ServiceError:
    return ServiceError(
        413, "too_large", f"the request body exceeds {max_bytes} bytes (CASTREAM_MAX_REQUEST_BYTES); send fewer bytes"
    )


def parse_json(body: bytes) -> list[tuple[str, bytes]]:
    try:
        # Parsed and validated in one pass; a body it refuses goes the long way below, which names what is wrong.
        images = ImagesJSON.model_validate_json(body).images
    except ValidationError:
        images = _validated(body)
    return [(f"image {i}", _b64(text, i)) for i, text in enumerate(images)]


def _validated(body: bytes) -> list[str]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ServiceError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    try:
        return ImagesJSON.model_validate(data).images
    except ValidationError as exc:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        raise ServiceError(422, "invalid_request", errors) from None


def _b64(text: str, index: int) -> bytes:
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        # Canonical base64 (the usual case) in one C pass; anything else as b64decode(validate=True) reads it.
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        pass
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError(422, "invalid_base64", f"images[{index}] is not valid base64") from None


async def parse_multipart(request: Request, body: bytes) -> list[tuple[str, bytes | memoryview]]:
    """The form's files named ``file``, in order: split in memory when the body has the usual shape, otherwise
    (and for every body that is refused) through Starlette's parser."""
    files = form_files(request.headers.get("content-type", ""), body)
    return files if files is not None else await parse_form(request.headers, body)


async def parse_form(headers: Headers, body: bytes) -> list[tuple[str, bytes]]:
    """Starlette's streaming parser, which spools files over 1 MiB to disk and names what is wrong."""

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        form = await MultiPartParser(headers, stream(), max_files=MAX_PARTS, max_fields=MAX_PARTS).parse()
    except (MultiPartException, ValueError) as exc:
        raise ServiceError(400, "invalid_multipart", f"the multipart body cannot be parsed: {exc}") from None
    images = []
    try:
        for i, value in enumerate(form.getlist(FIELD)):
            if not isinstance(value, UploadFile):
                raise ServiceError(422, "not_a_file", f"form field 'file' #{i} is text, not a file upload")
            images.append((value.filename or f"file {i}", await value.read()))
    finally:
        await form.close()
    return images
