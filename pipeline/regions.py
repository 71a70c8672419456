"""Predicted class map to regions, under one instance policy that every exporter shares.

``components`` makes one region per 8-connected component of each class; ``semantic`` one
region per class, its parts being the kept components. Everything per region works on its
bbox crop; only the per-class mask and its label image cover the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from pipeline.polygons import polygon_iou, trace_polygons
from pipeline.records import Region
from pipeline.rle import rle_from_crop

__all__ = ["ImageRegions", "RegionPolicy", "image_regions", "regions_from_class_map"]


class RegionPolicy(BaseModel):
    """Which pixels become regions, and when a polygon is faithful enough to be written."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instances: Literal["components", "semantic"] = "components"
    min_area: int = Field(16, ge=1)  # pixels; smaller components are speckle, dropped
    fill_holes_below: int = Field(0, ge=0)  # pixels; smaller holes are filled, 0 keeps all
    simplify_tolerance: float = Field(0.5, ge=0)  # pixels; 0 keeps the exact pixel boundary
    min_fidelity: float = Field(0.9, ge=0, le=1)  # polygon IoU below this: exporters use RLE
    max_vertices: int = Field(20_000, ge=0)  # per image; over it the largest rings go RLE
    background: int | None = 0  # the class that yields no regions; None: every class does


@dataclass(frozen=True, slots=True)
class _Component:
    label: int
    box: tuple[int, int, int, int]  # x, y, w, h
    first: tuple[int, int]  # (row, column) of its first pixel in raster order
    crop: npt.NDArray[np.bool_]  # its pixels within its box
    pixels: int


@dataclass(frozen=True, slots=True)
class ImageRegions:
    regions: list[Region]
    fragments: int  # components dropped as smaller than the policy's minimum area


def regions_from_class_map(
    class_map: npt.NDArray[np.uint8],
    confidence: npt.NDArray[np.uint8],
    *,
    image_id: str,
    policy: RegionPolicy,
    low_confidence: float = 0.5,
) -> list[Region]:
    """Regions ordered by class id, then by each region's first pixel in raster order.

    ``confidence`` is the max softmax scaled to 0..255; a region's score is its mean / 255,
    and its low-confidence share the share of its pixels under ``low_confidence``.
    The order is set here: OpenCV's contour and label numbering follow no documented order.
    """
    return image_regions(
        class_map, confidence, image_id=image_id, policy=policy, low_confidence=low_confidence
    ).regions


def image_regions(
    class_map: npt.NDArray[np.uint8],
    confidence: npt.NDArray[np.uint8],
    *,
    image_id: str,
    policy: RegionPolicy,
    low_confidence: float = 0.5,
) -> ImageRegions:
    """:func:`regions_from_class_map`, and the count of speckle components it dropped."""
    if class_map.ndim != 2 or class_map.dtype != np.uint8:
        raise ValueError(f"class_map must be 2-D uint8, got {class_map.dtype} {class_map.shape}")
    if confidence.shape != class_map.shape or confidence.dtype != np.uint8:
        raise ValueError(
            f"confidence must be uint8 shaped like class_map {class_map.shape}, "
            f"got {confidence.dtype} {confidence.shape}"
        )
    regions: list[Region] = []
    fragments = 0
    context = _Context(image_id, policy, round(low_confidence * 255))
    for class_id in np.flatnonzero(np.bincount(class_map.ravel(), minlength=256)).tolist():
        if class_id != policy.background:
            found, dropped = _class_regions(class_map, confidence, class_id, context)
            regions += found
            fragments += dropped
    return ImageRegions(_within_vertex_budget(regions, policy.max_vertices), fragments)


@dataclass(frozen=True, slots=True)
class _Context:
    image_id: str
    policy: RegionPolicy
    low_threshold: int  # confidence values under this (0..255) are doubtful


def _class_regions(
    class_map: npt.NDArray[np.uint8],
    confidence: npt.NDArray[np.uint8],
    class_id: int,
    context: _Context,
) -> tuple[list[Region], int]:
    policy = context.policy
    mask = (class_map == class_id).view(np.uint8)
    _, labels = cv2.connectedComponents(mask, connectivity=8)
    components, dropped = _components(mask, labels, policy.min_area)
    if not components:
        return [], dropped
    groups = [components] if policy.instances == "semantic" else [[c] for c in components]
    regions = []
    for group in groups:
        if len(group) == 1:
            (x0, y0, _, _), crop, pixels = group[0].box, group[0].crop, group[0].pixels
            x1, y1 = x0 + crop.shape[1], y0 + crop.shape[0]
        else:
            x0, y0, x1, y1 = _union_box([c.box for c in group])
            crop = np.isin(labels[y0:y1, x0:x1], [c.label for c in group])
            pixels = sum(c.pixels for c in group)
        if policy.fill_holes_below:
            crop = _fill_small_holes(crop, policy.fill_holes_below)
            pixels = int(np.count_nonzero(crop))
        window_confidence = confidence[y0:y1, x0:x1]
        regions.append(
            _region(crop, pixels, window_confidence, (x0, y0), class_map.shape, class_id, context)
        )
    return regions, dropped


def _components(
    mask: npt.NDArray[np.uint8], labels: npt.NDArray[np.int32], min_area: int
) -> tuple[list[_Component], int]:
    """Components of at least ``min_area`` pixels, in raster order of their first pixel, and
    how many smaller ones were dropped.

    Boxes come from the outer borders, not connectedComponentsWithStats, whose stats cost
    about twice the labelling itself. With 8-connected foreground each component has exactly
    one outer border (the top level of RETR_CCOMP), and its extreme pixels lie on it.
    """
    borders, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    found = []
    dropped = 0
    for border, (_, _, _, parent) in zip(borders, hierarchy[0], strict=True):
        if parent != -1:
            continue
        x0, y0, w, h = cv2.boundingRect(border)
        if w * h < min_area:
            dropped += 1
            continue
        x, y = border[0, 0].tolist()
        label = int(labels[y, x])
        crop = labels[y0 : y0 + h, x0 : x0 + w] == label
        pixels = int(np.count_nonzero(crop))
        if pixels >= min_area:
            first = (y0, x0 + int(np.argmax(crop[0])))
            found.append(_Component(label, (x0, y0, w, h), first, crop, pixels))
        else:
            dropped += 1
    found.sort(key=lambda c: c.first)
    return found, dropped


def _union_box(boxes: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    return (
        min(x for x, _, _, _ in boxes),
        min(y for _, y, _, _ in boxes),
        max(x + w for x, _, w, _ in boxes),
        max(y + h for _, y, _, h in boxes),
    )


def _fill_small_holes(crop: npt.NDArray[np.bool_], below: int) -> npt.NDArray[np.bool_]:
    """Fill enclosed background areas under ``below`` pixels. Holes are 4-connected, the
    complement of 8-connected foreground; a one-pixel frame makes the outside one component."""
    outside = np.ones((crop.shape[0] + 2, crop.shape[1] + 2), np.uint8)
    outside[1:-1, 1:-1] = ~crop
    count, labels, stats, _ = cv2.connectedComponentsWithStats(outside, connectivity=4)
    small = np.zeros(count, np.bool_)
    small[1:] = stats[1:, cv2.CC_STAT_AREA] < below
    small[labels[0, 0]] = False  # the outside
    filled: npt.NDArray[np.bool_] = crop | small[labels[1:-1, 1:-1]]
    return filled


def _region(
    crop: npt.NDArray[np.bool_],
    pixels: int,
    confidence: npt.NDArray[np.uint8],
    origin: tuple[int, int],
    shape: tuple[int, ...],
    class_id: int,
    context: _Context,
) -> Region:
    policy = context.policy
    (x0, y0), (height, width) = origin, shape
    inside = confidence[crop]
    rle = rle_from_crop(crop, x0=x0, y0=y0, height=height, width=width)
    polygons, exact = trace_polygons(crop, x0=x0, y0=y0, tolerance=policy.simplify_tolerance)
    fidelity = (
        1.0
        if exact
        else polygon_iou(
            polygons, rle, crop=crop, pixels=pixels, origin=origin, shape=(height, width)
        )
    )
    return Region(
        image_id=context.image_id,
        class_id=class_id,
        score=int(inside.sum()) / pixels / 255,
        low_confidence_share=int(np.count_nonzero(inside < context.low_threshold)) / pixels,
        # The crop is the region's tight box, so these equal pycocotools' area and toBbox on
        # the RLE (the tests hold them to it) without decoding it again.
        area=pixels,
        bbox=(x0, y0, crop.shape[1], crop.shape[0]),
        polygons=polygons,
        rle=rle,
        fidelity=fidelity,
        vertices=sum(len(ring) // 2 for polygon in polygons for ring in polygon),
        geometry="polygon" if fidelity >= policy.min_fidelity else "rle",
    )


def _within_vertex_budget(regions: list[Region], budget: int) -> list[Region]:
    """Move the regions with the most vertices to RLE until the image's polygons fit."""
    total = sum(r.vertices for r in regions if r.geometry == "polygon")
    heaviest = sorted(
        (i for i, r in enumerate(regions) if r.geometry == "polygon"),
        key=lambda i: -regions[i].vertices,
    )
    out = list(regions)
    for i in heaviest:
        if total <= budget:
            break
        total -= out[i].vertices
        out[i] = replace(out[i], geometry="rle")
    return out
