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
    area: int  # pixels on the mask, not the box: COCO readers take `area` as mask area
    bbox: tuple[int, int, int, int]  # x, y, w, h of the mask, as pycocotools' toBbox
    polygons: tuple[Polygon, ...]
    rle: str  # COCO compressed RLE counts at the image's (height, width)
