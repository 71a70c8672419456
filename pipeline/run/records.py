"""Record types that cross stage boundaries; frozen so nothing downstream edits a region."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Ring = tuple[float, ...]
"""A closed ring as flat ``x0, y0, x1, y1, ...`` in pixel-corner coordinates (COCO's)."""

Polygon = tuple[Ring, ...]
"""Exterior ring first, then its holes."""


Geometry = Literal["polygon", "rle"]
Status = Literal["ok", "failed"]
Inference = Literal["whole", "downscaled", "tiled"]


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
    geometry: Geometry  # what exporters write, decided by the fidelity gate


@dataclass(frozen=True, slots=True)
class RegionColumns:
    """Regions as columns: what tracing hands to the regions table, with no Python object
    per region or per coordinate. Polygons are flat x, y coordinates cut three ways:
    ``coordinates[rings[i]:rings[i + 1]]`` is ring i, ``parts[j]:parts[j + 1]`` the rings of
    part j (exterior first), ``polygons[k]:polygons[k + 1]`` the parts of region k."""

    image_id: list[str]
    class_id: list[int]
    score: list[float]
    low_confidence_share: list[float]
    area: list[int]
    bbox: list[tuple[int, int, int, int]]
    rle: list[str]
    fidelity: list[float]
    vertices: list[int]
    geometry: list[Geometry]
    coordinates: npt.NDArray[np.float32]
    rings: npt.NDArray[np.int32]
    parts: npt.NDArray[np.int32]
    polygons: npt.NDArray[np.int32]

    @classmethod
    def of(cls, regions: Sequence[Region]) -> RegionColumns:
        polygons = [polygon for region in regions for polygon in region.polygons]
        rings = [ring for polygon in polygons for ring in polygon]
        return cls(
            image_id=[r.image_id for r in regions],
            class_id=[r.class_id for r in regions],
            score=[r.score for r in regions],
            low_confidence_share=[r.low_confidence_share for r in regions],
            area=[r.area for r in regions],
            bbox=[r.bbox for r in regions],
            rle=[r.rle for r in regions],
            fidelity=[r.fidelity for r in regions],
            vertices=[r.vertices for r in regions],
            geometry=[r.geometry for r in regions],
            coordinates=np.array([v for ring in rings for v in ring], np.float32),
            rings=offsets([len(ring) for ring in rings]),
            parts=offsets([len(polygon) for polygon in polygons]),
            polygons=offsets([len(r.polygons) for r in regions]),
        )

    def regions(self) -> list[Region]:
        coordinates = self.coordinates.astype(float).tolist()
        rings = self.rings.tolist()
        parts = self.parts.tolist()
        polygons = self.polygons.tolist()
        out = []
        for k, image_id in enumerate(self.image_id):
            shapes = tuple(
                tuple(
                    tuple(coordinates[rings[i] : rings[i + 1]])
                    for i in range(parts[j], parts[j + 1])
                )
                for j in range(polygons[k], polygons[k + 1])
            )
            out.append(
                Region(
                    image_id=image_id,
                    class_id=self.class_id[k],
                    score=self.score[k],
                    low_confidence_share=self.low_confidence_share[k],
                    area=self.area[k],
                    bbox=self.bbox[k],
                    polygons=shapes,
                    rle=self.rle[k],
                    fidelity=self.fidelity[k],
                    vertices=self.vertices[k],
                    geometry=self.geometry[k],
                )
            )
        return out


def offsets(lengths: Sequence[int] | npt.NDArray[np.integer]) -> npt.NDArray[np.int32]:
    """Where each of consecutive pieces of these lengths starts, and where the last ends."""
    out = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=out[1:])
    return out


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One row per listed image, labeled or not: the run's ledger of what happened to each."""

    image_id: str
    key: str  # path relative to the source, as people name the file
    uri: str
    shard: str
    status: Status
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
    inference: Inference | None  # downscaled: to max_side
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

    def row(self) -> dict[str, Any]:
        """The record as an images-table row: its fields as they are, with none of
        ``dataclasses.asdict``'s deep copies (1.4 ms an image, on the main thread)."""
        return {name: getattr(self, name) for name in _IMAGE_FIELDS}


_IMAGE_FIELDS = tuple(f.name for f in fields(ImageRecord))
