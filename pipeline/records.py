"""Record types that cross stage boundaries; frozen so nothing downstream edits a region."""

from __future__ import annotations

from dataclasses import dataclass

Ring = tuple[float, ...]
"""A closed ring as flat ``x0, y0, x1, y1, ...`` in pixel-corner coordinates (COCO's)."""

Polygon = tuple[Ring, ...]
"""Exterior ring first, then its holes."""


@dataclass(frozen=True, slots=True)
class Region:
    """One connected region of one class on one image."""

    image_id: str
    class_id: int
    score: float  # mean confidence (max softmax) over the region's pixels, 0..1
    low_confidence_share: float  # share of its pixels under the run's low-confidence threshold
    area: int  # pixels on the mask, not the box: COCO readers take `area` as mask area
    bbox: tuple[int, int, int, int]  # x, y, w, h of the mask, as pycocotools' toBbox
    polygons: tuple[Polygon, ...]
    rle: str  # COCO compressed RLE counts at the image's (height, width)
    fidelity: float  # IoU of the polygons, re-rasterized, against the mask
    vertices: int  # points over all rings
    geometry: str  # "polygon" or "rle": what exporters write, decided by the fidelity gate


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One row per listed image, labeled or not: the run's ledger of what happened to each."""

    image_id: str
    key: str  # path relative to the source, as people name the file
    uri: str
    shard: str
    status: str  # "ok" or "failed"
    error: str | None  # why it failed, naming the file
    retryable: bool  # failed for a reason outside the file (a read error): retried on rerun
    size_bytes: int
    etag: str  # the listing's change token: a rerun re-labels the image when it differs
    content_hash: str | None  # sha256 of the bytes, once read
    model_version: str  # the ledger keys: a run folder holds one model and one config
    config_hash: str
    width: int | None  # oriented original size: outputs are at this size
    height: int | None
    model_width: int | None  # size the model saw after the resolution policy
    model_height: int | None
    mode: str | None  # PIL mode before conversion to RGB
    frames: int | None  # > 1: an animation or multi-page file, first frame labeled
    inference: str | None  # "whole", "downscaled" (to max_side) or "tiled"
    engine: str | None  # what ran the forward: "torch" or "openvino"
    precision: str | None  # at which precision it ran: "float32", "bfloat16", "float16"
    region_count: int
    mean_confidence: float | None
    low_confidence_share: float | None
    boundary_uncertainty: float | None  # 1 - mean confidence within 2 px of class boundaries
    fragments: int | None  # speckle components dropped under the minimum area
    review_priority: float | None  # expected share of wrong pixels; higher is reviewed first
    read_ms: float
    decode_ms: float
    predict_ms: float  # the image's share of its batch's forward pass
    regions_ms: float
