"""``POST /classify``: multipart or JSON base64 images in; top-k labels, attention and class maps out."""

from __future__ import annotations

import time

from fastapi import Request, Response

from service.inputs import read_images
from service.model import ImageOutput
from service.predict import Options, prediction
from service.preprocess import Prepared
from service.schemas import AttentionMode, ClassifyResponse, Explanation, ModelRef
from service.serving import Serving, Work


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
