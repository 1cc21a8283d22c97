"""Response bodies of the HTTP API (they also make the OpenAPI schema)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class AttentionMode(StrEnum):
    """What attention to return: nothing, the numeric grid, or the grid plus a PNG heat-map overlay."""

    none = "none"
    grid = "grid"
    overlay = "overlay"


class OverlayArea(StrEnum):
    """What overlays cover: the centre crop the model saw, or the whole original image with the crop drawn."""

    crop = "crop"
    image = "image"


class OverlayFormat(StrEnum):
    """The overlay's file format: PNG (lossless), or JPEG and WebP (smaller, and faster to encode)."""

    png = "png"
    jpeg = "jpeg"
    webp = "webp"


class ClassMap(BaseModel):
    height: int
    width: int
    values: list[list[float]] = Field(
        description="[height][width] the class's evidence per cell, in logit units: their sum plus `constant` is "
        "the class's logit"
    )
    constant: float = Field(description="the head's constant term for this class (the logit minus the map's sum)")
    overlay_png: str | None = Field(
        None, description="base64 PNG heat-map of the positive evidence (attention=overlay)"
    )
    overlay_jpeg: str | None = Field(None, description="the same as a base64 JPEG (overlay_format=jpeg)")
    overlay_webp: str | None = Field(None, description="the same as a base64 WebP (overlay_format=webp)")


class Label(BaseModel):
    label: str
    index: int = Field(description="position in the model's class list")
    score: float = Field(description="softmax probability")
    map: ClassMap | None = Field(None, description="the class map, with class_maps=true or for explain= classes")


class AttentionMap(BaseModel):
    height: int
    width: int
    values: list[list[float]] = Field(description="[height][width] non-negative weights that sum to 1")
    overlay_png: str | None = Field(
        None, description="base64 PNG heat-map over the crop the model saw, or over the whole image (overlay_on=image)"
    )
    overlay_jpeg: str | None = Field(None, description="the same as a base64 JPEG (overlay_format=jpeg)")
    overlay_webp: str | None = Field(None, description="the same as a base64 WebP (overlay_format=webp)")


class Prediction(BaseModel):
    top_k: list[Label]
    attention: AttentionMap | None = Field(description="null when not asked for or when the model has none")
    explained: list[Label] = Field(
        default_factory=list, description="the classes named by explain=, in request order, each with its map"
    )
    embedding: list[float] | None = Field(
        None, description="embedding=true: the pooled vector the classifier reads, for retrieval and drift"
    )


class ModelRef(BaseModel):
    name: str
    version: str


class Explanation(BaseModel):
    """What the model's maps are."""

    class_maps: str | None = Field(
        description="what each class map is: 'ca-stream', the logit split over the CA stream's learned attention; "
        "'cam', a GAP classifier's class activation map (the logit split over the grid through its classifier, "
        "exactly, every position weighing the same); null: the model has no class maps"
    )
    attention: bool = Field(description="whether the model has a learned attention map (a CA model; GAP has none)")


class ClassifyResponse(BaseModel):
    model: ModelRef
    explanation: Explanation = Field(description="what the class maps are, and whether there is learned attention")
    predictions: list[Prediction] = Field(description="one per image, in request order")


class InputSpec(BaseModel):
    name: str
    shape: list[int | None]
    dtype: str


class GridSize(BaseModel):
    height: int
    width: int


class OutputDescription(BaseModel):
    name: str
    shape: list[int | None] = Field(description="null for the batch and any size not known")
    dtype: str
    on_request: bool = Field(description="computed only when a request asks for it")


class ModelDescription(BaseModel):
    name: str
    version: str
    backbone: str
    pooling: str
    precision: str
    classes: list[str]
    input: InputSpec
    attention: GridSize | None
    output_stride: int = Field(32, description="the last feature map's cell in pixels: 32, or 16 (last stage dilated)")
    class_maps: bool = Field(description="whether the model file has class maps (class_maps=true, explain=)")
    explanation: Explanation = Field(description="what the class maps are, and whether there is learned attention")
    outputs: list[OutputDescription] = Field(description="the model file's outputs (docs/onnx-model.md), in order")
    preprocessing: dict[str, Any]
    providers: list[str] = Field(description="execution providers in use, preferred first")
    val_top1: float | None
    dataset: dict[str, Any] | None
    trained_on: str | None = Field(description="what the model was trained on, in a sentence (what it knows)")
    samples: int = Field(description="labelled training-data images the service offers at /v1/samples")
    max_batch_size: int
    max_images_per_request: int
    auth_required: bool


class SampleRef(BaseModel):
    index: int
    label: str = Field(description="the image's class")
    url: str = Field(description="the PNG image, relative to the service's root")


class Status(BaseModel):
    status: str


class ProtocolErrorBody(BaseModel):
    """An error of the Open Inference Protocol routes (``/v2``)."""

    error: str
    request_id: str = Field(description="the request's id, as in the x-request-id header and the log")
