"""``GET /v1/model`` and ``GET /metrics``."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.contract import INPUT
from service.deps import ServingDep
from service.errors import ErrorBody, ServiceError
from service.schemas import Explanation, GridSize, InputSpec, ModelDescription, OutputDescription, SampleRef

router = APIRouter(prefix="/v1", tags=["model"])
metrics_router = APIRouter(tags=["monitoring"])


@router.get("/model", response_model=ModelDescription, responses={503: {"model": ErrorBody}})
async def model(serving: ServingDep) -> ModelDescription:
    """The model being served: labels, input size, outputs, attention grid, what its maps are, providers in use."""
    info, s = serving.model.info, serving.settings
    crop = info.preprocessing.crop
    grid = serving.model.attention_shape
    return ModelDescription(
        name=info.name,
        version=info.version,
        backbone=info.backbone,
        pooling=info.pooling,
        precision=info.precision,
        classes=list(info.classes),
        input=InputSpec(name=INPUT, shape=[None, 3, crop, crop], dtype="float32"),
        attention=GridSize(height=grid[0], width=grid[1]) if grid else None,
        output_stride=info.output_stride,
        class_maps=serving.model.has_class_maps,
        explanation=Explanation(class_maps=serving.model.explanation, attention=serving.model.has_attention),
        outputs=[
            OutputDescription(name=o.name, shape=list(o.shape), dtype=o.dtype, on_request=o.on_request)
            for o in serving.model.listing()
        ],
        preprocessing=asdict(info.preprocessing),
        providers=serving.model.providers,
        val_top1=info.val_top1,
        dataset=info.dataset,
        trained_on=info.trained_on,
        samples=len(info.samples),
        max_batch_size=s.max_batch_size,
        max_images_per_request=s.max_images_per_request,
        auth_required=s.api_key is not None,
    )


@router.get("/samples", response_model=list[SampleRef], responses={503: {"model": ErrorBody}})
async def samples(serving: ServingDep) -> list[SampleRef]:
    """Labelled images of the model's training data, to try it with (empty for files that carry none)."""
    return [
        SampleRef(index=i, label=sample.label, url=f"v1/samples/{i}.png")
        for i, sample in enumerate(serving.model.info.samples)
    ]


@router.get(
    "/samples/{index}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 404: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
async def sample(index: int, serving: ServingDep) -> Response:
    """One of the sample images, as PNG."""
    images = serving.model.info.samples
    if not 0 <= index < len(images):
        raise ServiceError(404, "no_sample", f"no sample image {index}; this model has {len(images)} (GET /v1/samples)")
    return Response(images[index].png, media_type="image/png")


@metrics_router.get(
    "/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}}
)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition of every ``castream_*`` metric."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
