"""Predicted class map to regions: one per 8-connected component of each class.

Everything per region works on the component's bbox crop; only the per-class mask and its
label image cover the whole image.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from pipeline.polygons import polygons_from_mask
from pipeline.records import Region
from pipeline.rle import area_of_rle, bbox_of_rle, rle_from_crop

__all__ = ["RegionPolicy", "regions_from_class_map"]


class RegionPolicy(BaseModel):
    """Which components become regions and how far their polygons are simplified."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_area: int = Field(16, ge=1)  # pixels; smaller components are speckle, dropped
    simplify_tolerance: float = Field(0.5, ge=0)  # pixels; 0 keeps the exact pixel boundary
    background: int | None = 0  # the class that yields no regions; None: every class does


def regions_from_class_map(
    class_map: npt.NDArray[np.uint8],
    confidence: npt.NDArray[np.uint8],
    *,
    image_id: str,
    policy: RegionPolicy,
) -> list[Region]:
    """Regions ordered by class id, then by each component's first pixel in raster order.

    ``confidence`` is the max softmax scaled to 0..255; a region's score is its mean / 255.
    The order is set here: OpenCV's contour and label numbering follow no documented order.
    """
    if class_map.ndim != 2 or class_map.dtype != np.uint8:
        raise ValueError(f"class_map must be 2-D uint8, got {class_map.dtype} {class_map.shape}")
    if confidence.shape != class_map.shape or confidence.dtype != np.uint8:
        raise ValueError(
            f"confidence must be uint8 shaped like class_map {class_map.shape}, "
            f"got {confidence.dtype} {confidence.shape}"
        )
    regions: list[Region] = []
    for class_id in np.flatnonzero(np.bincount(class_map.ravel(), minlength=256)).tolist():
        if class_id != policy.background:
            regions += _class_regions(class_map, confidence, class_id, image_id, policy)
    return regions


def _class_regions(
    class_map: npt.NDArray[np.uint8],
    confidence: npt.NDArray[np.uint8],
    class_id: int,
    image_id: str,
    policy: RegionPolicy,
) -> list[Region]:
    height, width = class_map.shape
    mask = (class_map == class_id).view(np.uint8)
    # Boxes come from the outer borders, not connectedComponentsWithStats, whose stats cost
    # about twice the labelling itself. With 8-connected foreground each component has
    # exactly one outer border (the top level of RETR_CCOMP), and its extreme pixels lie on it.
    _, labels = cv2.connectedComponents(mask, connectivity=8)
    borders, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    keyed: list[tuple[tuple[int, int], Region]] = []
    for border, (_, _, _, parent) in zip(borders, hierarchy[0], strict=True):
        x0, y0, w, h = cv2.boundingRect(border)
        if parent != -1 or w * h < policy.min_area:
            continue
        x, y = border[0, 0].tolist()
        crop = labels[y0 : y0 + h, x0 : x0 + w] == labels[y, x]
        pixels = int(np.count_nonzero(crop))
        if pixels < policy.min_area:
            continue
        rle = rle_from_crop(crop, x0=x0, y0=y0, height=height, width=width)
        region = Region(
            image_id=image_id,
            class_id=class_id,
            score=int(confidence[y0 : y0 + h, x0 : x0 + w][crop].sum()) / pixels / 255,
            area=area_of_rle(rle, height=height, width=width),
            bbox=bbox_of_rle(rle, height=height, width=width),
            polygons=polygons_from_mask(crop, x0=x0, y0=y0, tolerance=policy.simplify_tolerance),
            rle=rle,
        )
        keyed.append(((y0, x0 + int(np.argmax(crop[0]))), region))
    keyed.sort(key=lambda item: item[0])
    return [region for _, region in keyed]
