"""Mask to polygons traced along pixel edges, so that pycocotools re-rasterizes them exactly.

Contours through pixel centres lose half a pixel all round (a 50x50 square comes back as
2401 px), so rings here run on the edges, in COCO's pixel-corner coordinates: pixel (x, y)
covers [x, x+1) x [y, y+1).
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt
from pycocotools import mask as mask_utils

from pipeline.records import Polygon, Ring

__all__ = ["polygon_iou", "polygons_from_mask", "rasterize_polygons", "trace_polygons"]

_DILATE = np.ones((3, 3), np.uint8)


def polygons_from_mask(
    mask: npt.NDArray[np.bool_], *, x0: int = 0, y0: int = 0, tolerance: float = 0.5
) -> tuple[Polygon, ...]:
    """Polygons (exterior, then holes) of a mask, shifted by (x0, y0) into image coordinates.

    ``tolerance`` is the Douglas-Peucker distance in pixels; 0 keeps the exact pixel
    boundary. A ring the simplification would shrink under 3 points is kept exact, so
    1-pixel regions and 1-pixel lines still rasterize to their pixels.
    """
    return trace_polygons(mask, x0=x0, y0=y0, tolerance=tolerance)[0]


def trace_polygons(
    mask: npt.NDArray[np.bool_], *, x0: int = 0, y0: int = 0, tolerance: float = 0.5
) -> tuple[tuple[Polygon, ...], bool]:
    """:func:`polygons_from_mask`, and whether every ring kept all its corners: then the
    polygons are the mask's exact boundary and rasterize back to it, with nothing to check."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    height, width = mask.shape
    # Grid point (2y+1, 2x+1) is pixel (y, x); even indices are its edges and corners. The
    # dilation covers each pixel's corners, so the outer layer of the grid's foreground is
    # the pixel boundary, and diagonal neighbours share a corner point (8-connectivity).
    grid = np.zeros((2 * height + 1, 2 * width + 1), np.uint8)
    grid[1::2, 1::2] = mask
    grid = cv2.dilate(grid, _DILATE)
    contours, hierarchy = cv2.findContours(grid, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return (), True
    corners = [_corner_ring(np.asarray(c, np.int32)) for c in contours]
    rings = [_simplified(ring, tolerance) for ring in corners]
    exact = all(len(a) == len(b) for a, b in zip(rings, corners, strict=True))
    polygons: list[Polygon] = []
    # RETR_CCOMP: hierarchy rows are (next, previous, first child, parent); two levels only,
    # exteriors at the top and their holes as children.
    links = hierarchy[0]
    for index, (_, _, child, parent) in enumerate(links):
        if parent != -1:
            continue
        polygon = [_flat(rings[index], (x0, y0))]
        while child != -1:
            polygon.append(_flat(rings[child], (x0, y0)))
            child = links[child][0]
        polygons.append(tuple(polygon))
    if len(polygons) == 1:
        return (polygons[0],), exact
    # Raster order of each part's top-left corner: findContours follows no documented order.
    ordered = tuple(sorted(polygons, key=lambda p: (min(p[0][1::2]), _left_of_top(p[0]))))
    return ordered, exact


def _corner_ring(points: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    """Corners of a ring traced on the grid, in pixel units and tracing order.

    The tracer cuts each concave corner with a diagonal step from an edge point (even, odd)
    to an (odd, even) one, or back; the true corner takes the even coordinate of each. So
    each point moves to the coordinate-wise even end of its step, which puts every point
    on the pixel boundary and every corner on the ring; Douglas-Peucker at 0 then keeps
    just the corners.
    """
    points = points.reshape(-1, 2)
    following = np.concatenate((points[1:], points[:1]))
    path = np.where(points & 1, following, points)
    return np.asarray(cv2.approxPolyDP(path, 0, closed=True), np.int32).reshape(-1, 2) // 2


def _simplified(ring: npt.NDArray[np.int32], tolerance: float) -> npt.NDArray[np.int32]:
    if tolerance == 0:
        return ring
    simple = np.asarray(cv2.approxPolyDP(ring, tolerance, closed=True), np.int32).reshape(-1, 2)
    return ring if len(simple) < 3 else simple


def _left_of_top(ring: Ring) -> float:
    top = min(ring[1::2])
    return min(x for x, y in zip(ring[::2], ring[1::2], strict=True) if y == top)


def _flat(ring: npt.NDArray[np.int32], origin: tuple[int, int]) -> Ring:
    return tuple((ring + origin).ravel().astype(float).tolist())


def rasterize_polygons(
    polygons: tuple[Polygon, ...], shape: tuple[int, int], *, origin: tuple[int, int] = (0, 0)
) -> npt.NDArray[np.bool_]:
    """Pixels inside the polygons as pycocotools (and so COCOeval) fills them: each exterior
    minus its holes, unioned, on a ``shape`` window whose top-left is ``origin`` (x, y)."""
    height, width = shape
    shift = np.asarray(origin, np.float64)
    out = np.zeros(shape, np.bool_)
    for exterior, *holes in polygons:
        part = _fill(exterior, shift, height, width)
        for hole in holes:
            part &= ~_fill(hole, shift, height, width)
        out |= part
    return out


def polygon_iou(
    polygons: tuple[Polygon, ...],
    counts: str,
    *,
    crop: npt.NDArray[np.bool_],
    pixels: int,
    origin: tuple[int, int],
    shape: tuple[int, int],
) -> float:
    """IoU of the polygons, as pycocotools fills them, against the mask whose compressed RLE
    on a ``shape`` image is ``counts`` and whose ``pixels`` pixels in the window at
    ``origin`` are ``crop``.

    One part (an exterior and its holes) is measured on RLEs with pycocotools' own set
    operations, never drawing a pixel: ``P = E minus U`` (U the union of the holes), so
    ``|P| = |E| - |E & U|`` and ``|P & M| = |E & M| - |E & U & M|``. Several parts may
    overlap once simplified, which those operations cannot subtract: they are drawn in the
    window."""
    if len(polygons) != 1:
        drawn = rasterize_polygons(polygons, crop.shape, origin=origin)
        union = int(np.count_nonzero(drawn | crop))
        return int(np.count_nonzero(drawn & crop)) / union if union else 1.0
    height, width = shape
    exterior, *holes = polygons[0]
    e = mask_utils.frPyObjects([list(exterior)], height, width)[0]
    m = {"size": [height, width], "counts": counts.encode("ascii")}
    e_area, m_area = int(mask_utils.area(e)), pixels
    both = int(mask_utils.area(mask_utils.merge([e, m], intersect=True)))
    if holes:
        u = mask_utils.merge(mask_utils.frPyObjects([list(h) for h in holes], height, width))
        eu = mask_utils.merge([e, u], intersect=True)
        e_area -= int(mask_utils.area(eu))
        both -= int(mask_utils.area(mask_utils.merge([eu, m], intersect=True)))
    union = e_area + m_area - both
    return both / union if union else 1.0


def _fill(
    ring: Ring, shift: npt.NDArray[np.float64], height: int, width: int
) -> npt.NDArray[np.bool_]:
    local = (np.asarray(ring, np.float64).reshape(-1, 2) - shift).ravel().tolist()
    rle = mask_utils.frPyObjects([local], height, width)
    return np.asarray(mask_utils.decode(rle)[:, :, 0], np.bool_)
