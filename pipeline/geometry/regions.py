"""Predicted class map to regions, under one instance policy that every exporter shares.

``components`` makes one region per 8-connected component of each class; ``semantic`` one
region per class, its parts being the kept components.

The work is shared across regions: one border trace per class, then every ring, run and
sum of the image in a few array operations (:class:`_Masks`). Per region there is only
what must be: simplifying its rings. Whether the simplified rings still draw the region's
pixels is proven for all rings at once from where they cross pixel columns; only a region
not proven so is drawn and measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.geometry.policy import RegionPolicy
from pipeline.geometry.polygons import (
    Crossings,
    EdgeRings,
    drawn_exactly,
    edge_rings,
    polygon_ious,
    simplified_all,
)
from pipeline.geometry.rle import compressed
from pipeline.run.records import Geometry, Region, RegionColumns, offsets

__all__ = ["ImageRegions", "image_regions"]


@dataclass(frozen=True, slots=True)
class ImageRegions:
    columns: RegionColumns
    fragments: int  # components dropped as smaller than the policy's minimum area

    @property
    def regions(self) -> list[Region]:
        return self.columns.regions()


def image_regions(
    class_map: npt.NDArray[np.uint8],
    confidence: npt.NDArray[np.uint8],
    *,
    image_id: str,
    policy: RegionPolicy,
    low_confidence: float = 0.5,
) -> ImageRegions:
    """The regions of a class map, as columns, and the count of speckle components dropped.

    Regions are ordered by class id, then by each region's first pixel in raster order (set
    here: OpenCV's contour numbering follows no documented order). ``confidence`` is the
    max softmax scaled to 0..255; a region's score is its mean / 255, and its low-confidence
    share the share of its pixels under ``low_confidence``.
    """
    if class_map.ndim != 2 or class_map.dtype != np.uint8:
        raise ValueError(f"class_map must be 2-D uint8, got {class_map.dtype} {class_map.shape}")
    if confidence.shape != class_map.shape or confidence.dtype != np.uint8:
        raise ValueError(
            f"confidence must be uint8 shaped like class_map {class_map.shape}, "
            f"got {confidence.dtype} {confidence.shape}"
        )
    borders = _Borders.trace(class_map, policy.background)
    layout = borders.layout(policy) if borders is not None else None
    if borders is None or layout is None or layout.count == 0:
        return ImageRegions(RegionColumns.of([]), layout.fragments if layout else 0)
    masks = _Masks.of(layout.region_of, layout.count, borders.rings.crossings, class_map.shape)
    pixels, confidence_sum, doubtful = masks.sums(confidence, round(low_confidence * 255))
    boxes = layout.boxes(borders.rings)
    starts = borders.rings.starts
    points, kept = simplified_all(
        borders.rings.corners,
        starts[layout.rings],
        starts[layout.rings + 1],
        policy.simplify_tolerance,
    )
    point_at = np.concatenate(([0], np.cumsum(kept))).tolist()
    # Rings that lost corners draw their traced ring's pixels or not: most are proven to,
    # the others' regions are measured.
    changed = np.diff(starts)[layout.rings] > kept
    drawn = ~changed
    drawn[changed] = drawn_exactly(
        points[np.repeat(changed, kept)],
        kept[changed],
        layout.rings[changed],
        borders.rings.crossings,
        class_map.shape,
    )
    region_of_ring = layout.region_of[layout.rings]
    vertices = np.bincount(region_of_ring, weights=kept, minlength=layout.count).astype(int)
    loose = np.flatnonzero(np.bincount(region_of_ring, weights=~drawn, minlength=layout.count))
    fidelity = [1.0] * layout.count
    positions, ring_counts = layout.ring_positions(loose)
    chosen = loose.tolist()
    measured = polygon_ious(
        [points[point_at[j] : point_at[j + 1]].reshape(-1) for j in positions.tolist()],
        ring_counts,
        _fills(layout, borders, loose, positions, ring_counts, masks.rles, class_map.shape),
        [masks.rles[k] for k in chosen],
        pixels=[pixels[k] for k in chosen],
        boxes=[boxes[k] for k in chosen],
        shape=class_map.shape,
        shapes=lambda i: layout.shapes(chosen[i], points, point_at),
    )
    for k, value in zip(loose.tolist(), measured, strict=True):
        fidelity[k] = value
    geometry: list[Geometry] = ["polygon" if f >= policy.min_fidelity else "rle" for f in fidelity]
    vertex_counts = vertices.tolist()
    columns = RegionColumns(
        image_id=[image_id] * layout.count,
        class_id=layout.class_ids,
        score=[s / n / 255 for s, n in zip(confidence_sum, pixels, strict=True)],
        low_confidence_share=[d / n for d, n in zip(doubtful, pixels, strict=True)],
        # The box and area equal pycocotools' toBbox and area on the RLE (the tests hold
        # them to it): the box is the exteriors', the area the RLE's own runs.
        area=pixels,
        bbox=boxes,
        rle=masks.rles,
        fidelity=fidelity,
        vertices=vertex_counts,
        geometry=_within_vertex_budget(geometry, vertex_counts, policy.max_vertices),
        coordinates=points.astype(np.float32).reshape(-1),
        rings=offsets(2 * kept),
        parts=layout.parts,
        polygons=layout.polygons,
    )
    return ImageRegions(columns, layout.fragments)


def _fills(
    layout: _Layout,
    borders: _Borders,
    regions: npt.NDArray[np.intp],
    positions: npt.NDArray[np.intp],
    ring_counts: npt.NDArray[np.intp],
    rles: list[str],
    shape: tuple[int, int],
) -> list[bytes]:
    """What each ring of ``regions`` encloses, as compressed RLE, ring by ring in output
    order (``positions`` in the layout's rings). A region of one ring encloses its own mask;
    the other regions' rings are measured all at once."""
    several = np.repeat(ring_counts > 1, ring_counts)
    traced = layout.rings[positions[several]]
    own = np.full(len(borders.parent), -1, np.intp)
    own[traced] = np.arange(len(traced))
    out: list[bytes] = [b""] * len(positions)
    found = (
        _Masks.of(own, len(traced), borders.rings.crossings, shape, flip=borders.parent >= 0).rles
        if len(traced)
        else []
    )
    for at, fill in zip(np.flatnonzero(several).tolist(), found, strict=True):
        out[at] = fill.encode()
    singles = regions[ring_counts == 1].tolist()
    for at, k in zip(np.flatnonzero(~several).tolist(), singles, strict=True):
        out[at] = rles[k].encode()
    return out


@dataclass(frozen=True, slots=True)
class _Borders:
    """Every border of every class of one image, traced once per class, as edge rings."""

    rings: EdgeRings
    class_of: npt.NDArray[np.intp]  # per ring
    parent: npt.NDArray[np.intp]  # per ring: its exterior's index, -1 for an exterior

    @classmethod
    def trace(cls, class_map: npt.NDArray[np.uint8], background: int | None) -> _Borders | None:
        chains: list[npt.NDArray[Any]] = []
        class_of: list[npt.NDArray[np.intp]] = []
        parent: list[npt.NDArray[np.intp]] = []
        # OpenCV's histogram: several times faster than np.bincount, which widens every pixel.
        counts = cv2.calcHist([class_map], [0], None, [256], [0, 256]).ravel()
        present = np.flatnonzero(counts).tolist()
        for class_id in present:
            if class_id == background:
                continue
            mask = (class_map == class_id).view(np.uint8)
            # RETR_CCOMP: two levels, exteriors at the top and their holes as children;
            # with 8-connected objects each component has exactly one exterior.
            found, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
            links = hierarchy[0][:, 3].astype(np.intp)
            parent.append(np.where(links < 0, -1, links + len(chains)))
            class_of.append(np.full(len(found), class_id, np.intp))
            chains += found
        if not chains:
            return None
        return cls(edge_rings(chains), np.concatenate(class_of), np.concatenate(parent))

    def layout(self, policy: RegionPolicy) -> _Layout:
        """Components of at least ``min_area`` pixels, by class then first pixel in raster
        order, each with the holes it keeps, grouped into regions. A hole under
        ``fill_holes_below`` pixels (counting all it encloses) is filled."""
        area = self.rings.area
        holes = np.flatnonzero(self.parent >= 0)
        cut = np.bincount(self.parent[holes], weights=area[holes], minlength=len(area))
        exteriors = np.flatnonzero(self.parent < 0)
        pixels = area[exteriors] - np.rint(cut[exteriors]).astype(np.int64)
        kept = exteriors[pixels >= policy.min_area]
        first = self.rings.first[kept]
        kept = kept[np.lexsort((first[:, 0], first[:, 1], self.class_of[kept]))]
        part = np.full(len(area), -1, np.intp)
        part[kept] = np.arange(len(kept))
        holes = holes[part[self.parent[holes]] >= 0]
        if policy.fill_holes_below:
            holes = holes[area[holes] >= policy.fill_holes_below]
        part[holes] = part[self.parent[holes]]
        rings = np.concatenate((kept, holes))
        # Each part's exterior, then its holes in tracing order.
        rings = rings[np.lexsort((rings, self.parent[rings] >= 0, part[rings]))]
        classes = self.class_of[kept]
        region_of_part = (
            np.unique(classes, return_inverse=True)[1].reshape(-1)
            if policy.instances == "semantic"
            else np.arange(len(kept))
        )
        count = int(region_of_part[-1]) + 1 if len(kept) else 0
        region_of = np.full(len(area), -1, np.intp)
        region_of[rings] = region_of_part[part[rings]]
        polygons = offsets(np.bincount(region_of_part, minlength=count))
        return _Layout(
            count=count,
            fragments=len(exteriors) - len(kept),
            exteriors=kept,
            rings=rings,
            parts=offsets(np.bincount(part[rings], minlength=len(kept))),
            polygons=polygons,
            region_of=region_of,
            class_ids=classes[polygons[:-1]].tolist(),
        )


@dataclass(frozen=True, slots=True)
class _Layout:
    """Which traced rings make which region, in output order."""

    count: int  # regions
    fragments: int
    exteriors: npt.NDArray[np.intp]  # ring index of each part's exterior, in part order
    rings: npt.NDArray[np.intp]  # every kept ring, in output order
    parts: npt.NDArray[np.int32]  # offsets into ``rings`` per part
    polygons: npt.NDArray[np.int32]  # offsets into parts per region
    region_of: npt.NDArray[np.intp]  # per traced ring, -1 for none
    class_ids: list[int]

    def boxes(self, rings: EdgeRings) -> list[tuple[int, int, int, int]]:
        """Each region's box, x, y, w, h, from its exteriors' corners."""
        starts = rings.starts[:-1]
        low = [np.minimum.reduceat(rings.corners[:, axis], starts) for axis in (0, 1)]
        high = [np.maximum.reduceat(rings.corners[:, axis], starts) for axis in (0, 1)]
        first = self.polygons[:-1]
        x0, y0 = (np.minimum.reduceat(v[self.exteriors], first) for v in low)
        x1, y1 = (np.maximum.reduceat(v[self.exteriors], first) for v in high)
        return list(zip(*(v.tolist() for v in (x0, y0, x1 - x0, y1 - y0)), strict=True))

    def ring_positions(
        self, regions: npt.NDArray[np.intp]
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """Where the rings of ``regions`` lie in ``rings``, region after region, and how many
        each region has."""
        first = self.parts[self.polygons[regions]].astype(np.intp)
        counts = self.parts[self.polygons[regions + 1]] - first
        skip = np.repeat(first - (np.cumsum(counts) - counts), counts)
        return np.arange(int(counts.sum()), dtype=np.intp) + skip, counts

    def shapes(
        self, region: int, points: npt.NDArray[np.int32], point_at: list[int]
    ) -> tuple[tuple[npt.NDArray[np.int32], ...], ...]:
        """Region ``region``'s simplified rings, part by part, for measuring: ring i of
        ``rings`` is ``points[point_at[i]:point_at[i + 1]]``."""
        parts = self.parts
        return tuple(
            tuple(
                points[point_at[i] : point_at[i + 1]].reshape(-1)
                for i in range(parts[j], parts[j + 1])
            )
            for j in range(self.polygons[region], self.polygons[region + 1])
        )


@dataclass(frozen=True, slots=True)
class _Masks:
    """Each region's mask as its runs down the image's columns, COCO's order, all at once.

    Walking down a column, each ring crossing enters (+1) or leaves (-1) a component; the
    region covers a pixel where the running count is above 0. Counting, not toggling, keeps
    a hole's filled area whole when a component of the same region lies inside it."""

    starts: npt.NDArray[np.int64]  # column-major index where each run of ones starts
    ends: npt.NDArray[np.int64]
    first_run: npt.NDArray[np.intp]  # per region, its first run's index
    rles: list[str]

    @classmethod
    def of(
        cls,
        region_of: npt.NDArray[np.intp],
        count: int,
        crossings: Crossings,
        shape: tuple[int, int],
        *,
        flip: npt.NDArray[np.bool_] | None = None,
    ) -> _Masks:
        """Masks of ``count`` regions, ``region_of`` giving each traced ring's region (-1:
        none). A ``flip`` ring counts its own inside, not its object's: a hole's area."""
        height, width = shape
        region = region_of[crossings.ring]
        inside = np.flatnonzero(region >= 0)
        at = crossings.column[inside] * height + crossings.row[inside]
        sign = crossings.sign[inside]
        if flip is not None:
            sign = np.where(flip[crossings.ring[inside]], -sign, sign)
        # By region, then index down the columns (the bottom of one column is the top of
        # the next); at one index, entering before leaving. One key, one sort: a merge sort,
        # which takes the runs of keys that each ring's travel already leaves in order
        # (three times faster than quicksort on the bench's crossings).
        key = np.sort(region[inside] << 42 | at << 1 | (sign < 0), kind="stable")
        region, at, sign = key >> 42, (key >> 1) & ((1 << 41) - 1), 1 - 2 * (key & 1)
        level = np.cumsum(sign)  # every region's crossings sum to 0
        edge = (level > 0) != (level - sign > 0)
        bounds, bound_region = at[edge], region[edge]
        starts, ends = bounds[0::2], bounds[1::2]
        first_run = np.searchsorted(bound_region[0::2], np.arange(count))
        # Runs alternate zeros and ones from index 0 to the end of the image; a final run
        # of zeros that is empty is left out, as pycocotools does.
        previous = np.concatenate(([0], bounds[:-1]))
        previous[2 * first_run] = 0
        runs = bounds - previous
        last = 2 * np.append(first_run[1:], len(starts)) - 1
        tail = height * width - bounds[last]
        counts = np.insert(runs, last[tail > 0] + 1, tail[tail > 0])
        count_heads = 2 * first_run + np.concatenate(([0], np.cumsum(tail > 0)[:-1]))
        return cls(starts, ends, first_run, compressed(counts, count_heads))

    def sums(
        self, confidence: npt.NDArray[np.uint8], low_threshold: int
    ) -> tuple[list[int], list[int], list[int]]:
        """Each region's pixels, sum of confidence and doubtful pixels (under
        ``low_threshold``), from summed-area tables: OpenCV builds one in a fraction of the
        time a prefix sum down the columns takes, and it gives that prefix sum anywhere."""
        height, width = confidence.shape
        # Exact in int32 up to 2**31, in float64 up to 2**53.
        depth = cv2.CV_32S if confidence.size * 255 < 2**31 else cv2.CV_64F
        below = cv2.threshold(confidence, low_threshold - 1, 1, cv2.THRESH_BINARY_INV)[1]
        column, row = np.divmod(np.concatenate((self.starts, self.ends)), height)
        # Down the columns to an index: every column before its own, then its own above it,
        # as three reads of the table, flat (a tenth of the time of reads by row and column).
        # An index past the last column has row 0: nothing of its own.
        row_start = row * (width + 1)
        reads = (
            height * (width + 1) + column,
            row_start + np.minimum(column + 1, width),
            row_start + column,
        )
        sums = []
        for values in (confidence, below):
            table = cv2.integral(values, sdepth=depth).ravel()  # sums above and left of corners
            before, own, above = (table.take(read) for read in reads)
            prefix = before + own - above
            runs = prefix[len(self.starts) :] - prefix[: len(self.starts)]
            sums.append(np.add.reduceat(runs, self.first_run).astype(np.int64).tolist())
        pixels = np.add.reduceat(self.ends - self.starts, self.first_run).tolist()
        return pixels, sums[0], sums[1]


def _within_vertex_budget(
    geometry: list[Geometry], vertices: list[int], budget: int
) -> list[Geometry]:
    """Move the regions with the most vertices to RLE until the image's polygons fit."""
    total = sum(v for v, g in zip(vertices, geometry, strict=True) if g == "polygon")
    heaviest = sorted(
        (i for i, g in enumerate(geometry) if g == "polygon"), key=lambda i: -vertices[i]
    )
    out = list(geometry)
    for i in heaviest:
        if total <= budget:
            break
        total -= vertices[i]
        out[i] = "rle"
    return out
