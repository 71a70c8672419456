"""Masks to rings traced along pixel edges, so that pycocotools re-rasterizes them exactly.

Contours through pixel centres lose half a pixel all round (a 50x50 square comes back as
2401 px), so rings here run on the edges, in COCO's pixel-corner coordinates: pixel (x, y)
covers [x, x+1) x [y, y+1).

OpenCV traces each border as the chain of its boundary pixels; :func:`edge_rings` turns the
chains of a whole image into edge rings in a few array operations, however many there are,
and with them the points where each ring crosses a pixel column, from which RLE is built.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from pycocotools import mask as mask_utils

from pipeline.run.records import Polygon, Ring

__all__ = [
    "Crossings",
    "EdgeRings",
    "drawn_crossings",
    "drawn_exactly",
    "edge_rings",
    "polygon_iou",
    "polygon_ious",
    "polygons_from_mask",
    "rasterize_polygons",
    "simplified",
    "simplified_all",
]

Shapes = Sequence[Sequence[Sequence[float] | npt.NDArray[Any]]]
"""Polygons, each its exterior then its holes, as flat x, y rings: tuples or arrays."""

# A pixel's corners, counter-clockwise on screen (y down): TL, BL, BR, TR. Side c runs from
# corner c to corner c + 1: down the left, east along the bottom, up the right, west along
# the top.
_CORNER_X = np.array([0, 0, 1, 1], np.int32)
_CORNER_Y = np.array([0, 1, 1, 0], np.int32)
# OpenCV traces a border with the object on its left. Stepping from one boundary pixel to
# the next in direction d, the edge path passes the corner they share on the right of d:
# the corner the path leaves the first pixel by, and arrives at the second by. Indexed by
# 3 * (dx + 1) + (dy + 1); the centre entry is a one-pixel chain, walked all round.
_LEAVE = np.zeros(9, np.int8)
_ARRIVE = np.zeros(9, np.int8)
for (_dx, _dy), _arrive, _leave in [
    ((1, 0), 1, 2),
    ((-1, 0), 3, 0),
    ((0, 1), 0, 1),
    ((0, -1), 2, 3),
    ((1, 1), 0, 2),
    ((1, -1), 1, 3),
    ((-1, 1), 3, 1),
    ((-1, -1), 2, 0),
]:
    _ARRIVE[3 * (_dx + 1) + _dy + 1], _LEAVE[3 * (_dx + 1) + _dy + 1] = _arrive, _leave


@dataclass(frozen=True, slots=True)
class Crossings:
    """Where rings cross pixel columns: the horizontal unit edges of every ring, ring after
    ring, each ring's in travel order. The edge at ``row`` of ``column`` lies between pixels
    (column, row - 1) and (column, row)."""

    ring: npt.NDArray[np.intp]
    column: npt.NDArray[np.int64]
    row: npt.NDArray[np.int64]
    # +1: the traced object (left of the ring, also of a hole's) starts at ``row``; -1: ends
    sign: npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class EdgeRings:
    """Rings along pixel edges, one per traced border, in a few flat arrays."""

    corners: npt.NDArray[np.int32]  # (n, 2) x, y: ring i is corners[starts[i]:starts[i + 1]]
    starts: npt.NDArray[np.intp]
    area: npt.NDArray[np.int64]  # pixels each ring encloses (holes too: what they cut out)
    first: npt.NDArray[np.int32]  # (rings, 2) x, y of each border's first traced pixel
    crossings: Crossings

    def ring(self, index: int) -> npt.NDArray[np.int32]:
        return self.corners[self.starts[index] : self.starts[index + 1]]


def edge_rings(chains: Sequence[npt.NDArray[Any]]) -> EdgeRings:
    """Edge rings of borders that ``cv2.findContours(..., cv2.CHAIN_APPROX_NONE)`` traced.

    Each boundary pixel contributes the sides from the corner the path arrives by to the one
    it leaves by, counter-clockwise around the pixel. Everything follows per pixel, without
    walking the path: a ring's corners are where its side changes direction (always between
    two sides of one pixel; between pixels, when the next pixel's first side differs from the
    last one's), and its crossings are the bottom and top sides among them. An outer border's
    first pixel is its component's first in raster order.
    """
    lengths = np.fromiter((len(chain) for chain in chains), np.intp, len(chains))
    pixels = np.concatenate(chains).reshape(-1, 2)
    ends = np.cumsum(lengths)
    heads = ends - lengths
    following = np.empty_like(pixels)
    following[:-1] = pixels[1:]
    following[ends - 1] = pixels[heads]
    step = following - pixels
    leaving = 3 * step[:, 0] + step[:, 1] + 4
    leave = _LEAVE[leaving]
    arrive = _previous(_ARRIVE[leaving], heads, ends)
    sides = (leave - arrive) & 3
    sides[sides == 0] = 4  # leaving by the corner it arrived by: around the tip of a spur
    # The pixel's first side turns from the last side of the one before, leave - 1 of it.
    turned = arrive != ((_previous(leave, heads, ends) - 1) & 3)
    x, y = pixels[:, 0], pixels[:, 1]
    # Corners: the turning start of each side but the first, which only when it turns.
    kept = sides - 1 + turned
    seen = np.concatenate(([0], np.cumsum(kept)))
    owner = np.repeat(np.arange(len(pixels)), kept)
    corner = ((arrive + 1 - turned)[owner] + np.arange(seen[-1]) - seen[owner]) & 3
    corners = np.stack((x[owner] + _CORNER_X[corner], y[owner] + _CORNER_Y[corner]), axis=1)
    # Crossings: sides 1 (east along the bottom) and 3 (west along the top). Side 1 comes
    # first when the path arrives by corner 0 or 1, side 3 first otherwise.
    first = (~arrive) & 1  # how many sides into the pixel the first of them comes
    at = np.flatnonzero(np.stack((first < sides, first + 2 < sides), axis=1).ravel())
    pixel = at >> 1
    east = (at & 1) == (arrive[pixel] >> 1)
    # Walking east the object is on the left, above the edge: its inside ends there.
    row = y[pixel].astype(np.int64) + east
    ring = np.repeat(np.arange(len(chains)), lengths)[pixel]
    crossings = Crossings(
        ring=ring, column=x[pixel].astype(np.int64), row=row, sign=np.where(east, -1, 1)
    )
    # Down each column a ring encloses (bottom - top) pixels: the sum of -sign * row.
    total = np.concatenate(([0], np.cumsum(np.where(east, row, -row))))
    bounds = np.searchsorted(ring, np.arange(len(chains) + 1))
    return EdgeRings(
        corners=corners,
        starts=seen[np.concatenate(([0], ends))],
        area=np.abs(total[bounds[1:]] - total[bounds[:-1]]),
        first=pixels[heads].astype(np.int32),
        crossings=crossings,
    )


def _previous(
    values: npt.NDArray[np.int8], heads: npt.NDArray[np.intp], ends: npt.NDArray[np.intp]
) -> npt.NDArray[np.int8]:
    """Each value's predecessor's along its own closed ring."""
    out = np.empty_like(values)
    out[1:] = values[:-1]
    out[heads] = values[ends - 1]
    return out


def _following(
    size: int, heads: npt.NDArray[np.intp], ends: npt.NDArray[np.intp]
) -> npt.NDArray[np.intp]:
    """Index of each point's successor along its own closed ring."""
    index = np.arange(1, size + 1)
    index[ends - 1] = heads
    return index


def drawn_exactly(
    points: npt.NDArray[np.int32],
    lengths: npt.NDArray[np.intp],
    traced: npt.NDArray[np.intp],
    crossings: Crossings,
    shape: tuple[int, int],
) -> npt.NDArray[np.bool_]:
    """Which of the simplified rings pycocotools is proven to draw as the traced rings they
    simplify, without drawing any: ``points`` holds ring after ring, ``lengths`` corners each,
    ``traced`` the index in ``crossings`` of the ring each one simplifies.

    pycocotools fills a polygon by the parity of the points where its edges cross pixel
    columns, so two rings with the same crossings fill the same pixels. Each simplified edge's
    crossings are computed as ``rleFrPoly`` finds them, in travel order, and the ring is
    proven when they are the traced ring's, from the same start. A ring not proven (its
    crossings differ, or agree only in another order) is left to be drawn."""
    height = shape[0]
    count = len(lengths)
    ring_of_edge, drawn, unsure = drawn_crossings(points, lengths, height)
    drawn_count = np.bincount(ring_of_edge, minlength=count)
    first = np.searchsorted(crossings.ring, traced)
    traced_count = np.searchsorted(crossings.ring, traced, side="right") - first
    rings = np.flatnonzero(
        (drawn_count == traced_count)
        & (traced_count > 0)
        & (np.bincount(ring_of_edge, weights=unsure, minlength=count) == 0)
    )
    # The rings whose counts agree, side by side: the traced crossings, and the drawn ones
    # turned to start where the traced ring does. Its crossings are distinct: drawn ones
    # that hold its first twice cannot match, whichever is taken.
    n = traced_count[rings]
    heads = np.cumsum(n) - n
    within = np.arange(int(n.sum())) - np.repeat(heads, n)
    owner = np.repeat(np.arange(len(rings)), n)
    at = first[rings][owner] + within
    exact = crossings.column[at] * height + crossings.row[at]
    drawn = drawn[(np.cumsum(drawn_count) - drawn_count)[rings][owner] + within]
    starts = np.flatnonzero(drawn == exact[heads][owner])
    shift = np.full(len(rings), -1, np.intp)
    shift[owner[starts]] = within[starts]
    turned = drawn[heads[owner] + (within + shift[owner]) % n[owner]]
    differ = np.bincount(owner, weights=turned != exact, minlength=len(rings))
    out = np.zeros(count, np.bool_)
    out[rings] = (shift >= 0) & (differ == 0)
    return out


def drawn_crossings(
    points: npt.NDArray[np.int32], lengths: npt.NDArray[np.intp], height: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Where pycocotools' ``rleFrPoly`` finds closed rings, corners in whole pixels, crossing
    pixel columns: ``(ring, position, unsure)`` per crossing, ring after ring, each ring's in
    travel order, the position being column * height + row, the row the first pixel inside
    below it. ``unsure``: a crossing whose row could not be pinned down (never seen)."""
    point_heads = np.cumsum(lengths) - lengths
    following = _following(len(points), point_heads, point_heads + lengths)
    x0, y0 = points[:, 0].astype(np.int64), points[:, 1].astype(np.int64)
    x1, y1 = x0[following], y0[following]
    columns = np.abs(x1 - x0)  # each edge crosses one column per unit it runs east or west
    edge = np.repeat(np.arange(len(points)), columns)
    k = np.arange(len(edge)) - np.repeat(np.cumsum(columns) - columns, columns)
    column = np.where(x1[edge] > x0[edge], x0[edge] + k, x0[edge] - 1 - k)
    row = y0[edge]
    unsure = np.zeros(len(edge), np.bool_)
    slanted = np.flatnonzero(row != y1[edge])
    if len(slanted):
        ends = edge[slanted]
        row[slanted], unsure[slanted] = _slanted_rows(
            x0[ends], y0[ends], x1[ends], y1[ends], column[slanted], height
        )
    ring = np.repeat(np.arange(len(lengths)), lengths)[edge]
    return ring, column * height + row, unsure


def _slanted_rows(
    x0: npt.NDArray[np.int64],
    y0: npt.NDArray[np.int64],
    x1: npt.NDArray[np.int64],
    y1: npt.NDArray[np.int64],
    column: npt.NDArray[np.int64],
    height: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """The row at which pycocotools' ``rleFrPoly`` finds the edge (x0, y0)-(x1, y1), corners
    in whole pixels, crossing ``column``, with its arithmetic: ends scaled 5x, the edge walked
    one unit at a time along its longer axis from its lower end, the other axis rounded at
    each step; a column is crossed between the points at 5 * column + 2 and + 3, and the row
    is the lower of their two, scaled back and rounded up. Also where the step could not be
    pinned down (never seen; such a ring is then drawn)."""
    xa, ya, xb, yb = 5 * x0, 5 * y0, 5 * x1, 5 * y1
    shallow = np.abs(xb - xa) >= np.abs(yb - ya)
    flip = np.where(shallow, xa > xb, ya > yb)
    xs, xe = np.where(flip, xb, xa), np.where(flip, xa, xb)
    ys, ye = np.where(flip, yb, ya), np.where(flip, ya, yb)
    low = np.empty(len(xa), np.float64)
    unsure = np.zeros(len(xa), np.bool_)
    # Along x: v(t) = (int)(ys + s * t + .5) at u = xs + t; the column's two points.
    a = np.flatnonzero(shallow)
    slope = (ye[a] - ys[a]) / (xe[a] - xs[a])
    t = (5 * column[a] + 2 - xs[a]).astype(np.float64)
    low[a] = np.minimum(np.trunc(ys[a] + slope * t + 0.5), np.trunc(ys[a] + slope * (t + 1) + 0.5))
    # Along y: u(t) = (int)(xs + s * t + .5) at v = ys + t, which moves at most one unit a
    # step; the first t past the column's middle, found from the line and checked on u.
    b = np.flatnonzero(~shallow)
    xs, xe, ys, ye, column = xs[b], xe[b], ys[b], ye[b], column[b]
    slope = (xe - xs) / (ye - ys)
    east = xe > xs
    target = np.where(east, 5 * column + 3, 5 * column + 2)
    middle = (5 * column + 2.5 - xs) / slope
    t = np.where(east, np.ceil(middle), np.floor(middle) + 1)

    def past(t: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        u = np.trunc(xs + slope * t + 0.5)
        reached: npt.NDArray[np.bool_] = np.where(east, u >= target, u <= target)
        return reached

    t = np.where(past(t), t, t + 1)
    t = np.where(past(t - 1), t - 1, t)
    unsure[b] = past(t - 1) | ~past(t)
    low[b] = ys + t - 1
    rows = np.clip(np.ceil((low + 0.5) / 5 - 0.5), 0, height).astype(np.int64)
    return rows, unsure


def simplified_all(
    corners: npt.NDArray[np.int32],
    starts: npt.NDArray[np.intp],
    ends: npt.NDArray[np.intp],
    tolerance: float,
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.intp]]:
    """:func:`simplified` of the rings ``corners[starts[i]:ends[i]]``, as one array of points
    and each ring's count of them, with the per-ring Python kept to one call: an image has
    hundreds of rings."""
    approx = cv2.approxPolyDP
    bounds = zip(starts.tolist(), ends.tolist(), strict=True)
    rings = [corners[a:b].reshape(-1, 1, 2) for a, b in bounds]
    simple = [approx(ring, tolerance, True) for ring in rings] if tolerance else rings
    lengths = np.fromiter(map(len, simple), np.intp, len(simple))
    for i in np.flatnonzero(lengths < 3).tolist():  # kept exact
        simple[i] = rings[i]
        lengths[i] = len(rings[i])
    points = np.concatenate(simple, dtype=np.int32) if simple else corners[:0]
    return points.reshape(-1, 2), lengths


def simplified(ring: npt.NDArray[np.int32], tolerance: float) -> npt.NDArray[np.int32]:
    """Douglas-Peucker at ``tolerance`` pixels; a ring it would shrink under 3 points stays
    exact, so 1-pixel regions and 1-pixel lines still rasterize to their pixels."""
    return simplified_all(ring, np.array([0]), np.array([len(ring)]), tolerance)[0]


def flat(ring: npt.NDArray[np.int32]) -> Ring:
    return tuple(ring.ravel().astype(float).tolist())


def polygons_from_mask(
    mask: npt.NDArray[np.bool_], *, x0: int = 0, y0: int = 0, tolerance: float = 0.5
) -> tuple[Polygon, ...]:
    """Polygons (exterior, then holes) of a mask, shifted by (x0, y0) into image coordinates,
    in raster order of each part's first pixel.

    ``tolerance`` is the Douglas-Peucker distance in pixels; 0 keeps the exact pixel
    boundary.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    chains, hierarchy = cv2.findContours(
        np.ascontiguousarray(mask, np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE
    )
    if not chains:
        return ()
    rings = edge_rings(chains)
    # RETR_CCOMP: two levels, exteriors at the top and their holes as children.
    parents = hierarchy[0][:, 3].tolist()
    holes: dict[int, list[int]] = {}
    for index, parent in enumerate(parents):
        if parent != -1:
            holes.setdefault(parent, []).append(index)
    exteriors = sorted(
        (i for i, parent in enumerate(parents) if parent == -1),
        key=lambda i: (int(rings.first[i, 1]), int(rings.first[i, 0])),
    )
    origin = np.array([x0, y0], np.int32)
    return tuple(
        tuple(
            flat(simplified(rings.ring(i), tolerance) + origin)
            for i in (exterior, *holes.get(exterior, ()))
        )
        for exterior in exteriors
    )


def rasterize_polygons(
    polygons: Shapes, shape: tuple[int, int], *, origin: tuple[int, int] = (0, 0)
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
    polygons: Shapes,
    counts: str,
    *,
    pixels: int,
    box: tuple[int, int, int, int],
    shape: tuple[int, int],
) -> float:
    """IoU of the polygons, as pycocotools fills them, against the mask of ``pixels`` pixels
    whose compressed RLE on a ``shape`` image is ``counts`` and whose box is ``box``.

    One part (an exterior and its holes) is measured on RLEs with pycocotools' own set
    operations, never drawing a pixel: ``P = E minus U`` (U the union of the holes), so
    ``|P| = |E| - |E & U|`` and ``|P & M| = |E & M| - |E & U & M|``. Several parts may
    overlap once simplified, which those operations cannot subtract: they are drawn in the
    box, where every simplified ring lies, since its corners are some of the exact ring's."""
    height, width = shape
    m = {"size": [height, width], "counts": counts.encode("ascii")}
    if len(polygons) != 1:
        x0, y0, w, h = box
        mask = np.asarray(mask_utils.decode(m)[y0 : y0 + h, x0 : x0 + w], np.bool_)
        drawn = rasterize_polygons(polygons, (h, w), origin=(x0, y0))
        union = int(np.count_nonzero(drawn | mask))
        return int(np.count_nonzero(drawn & mask)) / union if union else 1.0
    exterior, *holes = polygons[0]
    e = mask_utils.frPyObjects([list(exterior)], height, width)[0]
    e_area, m_area = int(mask_utils.area(e)), pixels
    both = int(mask_utils.area(mask_utils.merge([e, m], intersect=True)))
    if holes:
        u = mask_utils.merge(mask_utils.frPyObjects([list(h) for h in holes], height, width))
        eu = mask_utils.merge([e, u], intersect=True)
        e_area -= int(mask_utils.area(eu))
        both -= int(mask_utils.area(mask_utils.merge([eu, m], intersect=True)))
    union = e_area + m_area - both
    return both / union if union else 1.0


def polygon_ious(
    rings: Sequence[npt.NDArray[Any]],
    ring_counts: npt.NDArray[np.intp],
    fills: Sequence[bytes],
    counts: list[str],
    *,
    pixels: list[int],
    boxes: list[tuple[int, int, int, int]],
    shape: tuple[int, int],
    shapes: Callable[[int], Shapes],
) -> list[float]:
    """:func:`polygon_iou` of many regions. ``rings``: every simplified ring of the regions,
    flat x, y, region after region, ``ring_counts`` of them each; ``fills``: the compressed
    RLE of what each of those rings encloses before simplification. Every ring is rasterized
    in one call; a region whose every ring gives back its own fill draws its mask exactly
    (IoU 1). The rest are measured one by one, on ``shapes(i)``. Regions go through here only
    when :func:`drawn_exactly` could not prove their rings."""
    height, width = shape
    drawn = (
        [rle["counts"] for rle in mask_utils.frPyObjects(list(rings), height, width)]
        if rings
        else []
    )
    exact = np.fromiter(map(operator.eq, drawn, fills), np.bool_, len(fills))
    wrong = np.concatenate(([0], np.cumsum(~exact)))
    ends = np.cumsum(ring_counts)
    whole = (wrong[ends] == wrong[ends - ring_counts]).tolist()
    return [
        1.0
        if exact
        else polygon_iou(shapes(i), counts[i], pixels=pixels[i], box=boxes[i], shape=shape)
        for i, exact in enumerate(whole)
    ]


def _fill(
    ring: Sequence[float] | npt.NDArray[Any],
    shift: npt.NDArray[np.float64],
    height: int,
    width: int,
) -> npt.NDArray[np.bool_]:
    local = (np.asarray(ring, np.float64).reshape(-1, 2) - shift).ravel().tolist()
    rle = mask_utils.frPyObjects([local], height, width)
    return np.asarray(mask_utils.decode(rle)[:, :, 0], np.bool_)
