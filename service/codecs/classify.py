"""``POST /classify``: multipart or JSON base64 images in; top-k labels, attention and class maps out."""

from __future__ import annotations

import time

from fastapi import Request, Response

from service.inputs import read_images
from service.model import ImageOutput
from service.predict import Options, prediction
from service.preprocess import Prepared
from service.schemas import AttentionMode, ClassifyResponse, Explanation, ModelRef, OverlayArea, OverlayFormat
from service.serving import Serving, Work

DEFAULT = Options()  # what a query that says nothing asks for
TOP_K_MAX = 1000
OVERLAY_SIDES = (16, 8192)  # the least and the most a whole-image overlay's longer side may be asked at


class ClassifyCodec:
    """The native API's body and answer, for ``options`` (already checked against the model)."""

    def __init__(self, serving: Serving, options: Options):
        self.serving, self.options = serving, options
        self.outputs = options.outputs(serving.model)  # before the body is read: 422 if the model lacks one

    async def read(self, request: Request) -> Work:
        s, options = self.serving.settings, self.options
        files = await read_images(request, s.max_request_bytes, s.max_images_per_request, s.body_timeout_s)
        overlays = options.attention is AttentionMode.overlay
        return Work(files=files, outputs=self.outputs, display=options.display, offload_encode=overlays)

    def encode(self, outputs: list[ImageOutput], prepared: list[Prepared] | None) -> Response:
        assert prepared is not None  # /classify always sends files
        start, options, model = time.perf_counter(), self.options, self.serving.model
        info = model.info
        predictions = [prediction(o, p, info.classes, options) for o, p in zip(outputs, prepared, strict=True)]
        response = ClassifyResponse(
            model=ModelRef(name=info.name, version=info.version),
            explanation=Explanation(class_maps=model.explanation, attention=model.has_attention),
            predictions=predictions,
        )
        # Already a validated model: serialised directly rather than validated again by FastAPI.
        body = response.__pydantic_serializer__.to_json(response)
        seconds = time.perf_counter() - start
        self.serving.metrics.encode_seconds.labels(attention=options.attention.value).observe(seconds)
        return Response(body, media_type="application/json")


def classify_codec(
    serving: Serving,
    top_k: int = DEFAULT.top_k,
    attention: AttentionMode = DEFAULT.attention,
    class_maps: bool = DEFAULT.class_maps,
    explain: list[str] | None = None,
    overlay_on: OverlayArea = DEFAULT.overlay_on,
    overlay_size: int = DEFAULT.overlay_size,
    overlay_format: OverlayFormat = DEFAULT.overlay_format,
    embedding: bool = DEFAULT.embedding,
) -> ClassifyCodec:
    """The codec for a ``POST /classify`` query whose values are valid; 422 when the model cannot answer it
    (``no_class_maps``, ``unknown_label``, ``no_embedding``), before the body is read."""
    explained: tuple[int, ...] = ()
    if class_maps or explain:
        serving.require_class_maps()
        explained = serving.class_indices(explain or [])
    png_level = serving.settings.overlay_png_level
    options = Options(
        top_k, attention, class_maps, explained, overlay_on, png_level, overlay_size, overlay_format, embedding
    )
    return ClassifyCodec(serving, options)
