"""Parquet for analysis: the regions with the image columns a user needs, and every image row.

``regions.parquet`` keeps polygons as nested lists, so it reads back exactly as the records;
the ``geometry`` column stays the fidelity gate's "polygon"/"rle". With ``wkb`` it also gets
a ``wkb`` column and GeoParquet 1.1 ``geo`` metadata, so GIS tools read the regions as
MultiPolygons. A region the gate sent to RLE gets its mask's exact pixel boundary there, not
the polygons the gate rejected. Coordinates are pixels, so ``crs`` is null: GeoParquet's
"no CRS", where a missing key would mean longitude/latitude.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
from pycocotools import mask as mask_utils

from pipeline.geometry.polygons import polygons_from_mask
from pipeline.run.records import Polygon
from pipeline.run.view import ExportOptions, RunView

IMAGE_COLUMNS = ("key", "uri", "width", "height", "model_version")
WKB_COLUMN = "wkb"
GEOPARQUET_VERSION = "1.1.0"

_LITTLE_ENDIAN = 1
_WKB_POLYGON = 3
_WKB_MULTIPOLYGON = 6


def export_parquet(view: RunView, options: ExportOptions) -> tuple[str, ...]:
    regions = regions_with_images(view)
    if options.wkb:
        regions = with_wkb(regions)
    written = []
    for name, table in (("regions.parquet", regions), ("images.parquet", view.images)):
        uri = view.layout.export(name)
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        view.layout.storage.write_atomic(uri, buffer.getvalue())
        written.append(uri)
    return tuple(written)


def regions_with_images(view: RunView) -> pa.Table:
    """The regions in their order, each with its image's columns appended."""
    row_of = {image_id: i for i, image_id in enumerate(view.images["image_id"].to_pylist())}
    rows = pa.array([row_of[i] for i in view.regions["image_id"].to_pylist()], pa.int64())
    per_region = view.images.select(list(IMAGE_COLUMNS)).take(rows)
    table = view.regions
    for name in IMAGE_COLUMNS:
        table = table.append_column(per_region.schema.field(name), per_region[name])
    return table


def with_wkb(regions: pa.Table) -> pa.Table:
    """Add the WKB MultiPolygon column and the GeoParquet metadata that names it."""
    shapes = [
        row["polygons"] if row["geometry"] == "polygon" else mask_polygons(row)
        for row in regions.select(
            ["polygons", "geometry", "rle", "bbox", "height", "width"]
        ).to_pylist()
    ]
    column: dict[str, Any] = {"encoding": "WKB", "geometry_types": ["MultiPolygon"], "crs": None}
    box = bounds(shapes)
    if box is not None:
        column["bbox"] = box
    geo = {
        "version": GEOPARQUET_VERSION,
        "primary_column": WKB_COLUMN,
        "columns": {WKB_COLUMN: column},
    }
    table = regions.append_column(
        WKB_COLUMN, pa.array([multipolygon_wkb(polygons) for polygons in shapes], pa.binary())
    )
    metadata = {**(table.schema.metadata or {}), b"geo": json.dumps(geo).encode()}
    return table.replace_schema_metadata(metadata)


def bounds(shapes: Sequence[Sequence[Sequence[Sequence[float]]]]) -> list[float] | None:
    """[xmin, ymin, xmax, ymax] over every point, as GeoParquet's bbox; None without points."""
    points = [
        np.asarray(ring, np.float64).reshape(-1, 2)
        for polygons in shapes
        for polygon in polygons
        for ring in polygon
    ]
    if not points:
        return None
    every = np.concatenate(points)
    return [*every.min(axis=0).tolist(), *every.max(axis=0).tolist()]


def mask_polygons(row: dict[str, Any]) -> tuple[Polygon, ...]:
    """The exact pixel boundary of a region's RLE mask, traced on its bbox crop."""
    rle = {"size": [row["height"], row["width"]], "counts": row["rle"].encode("ascii")}
    x, y, w, h = row["bbox"]
    crop = np.asarray(mask_utils.decode(rle)[y : y + h, x : x + w], np.bool_)
    return polygons_from_mask(crop, x0=x, y0=y, tolerance=0)


def ring_points(ring: Sequence[float]) -> npt.NDArray[np.float64]:
    """A flat x, y ring as closed (n, 2) points: WKB rings repeat their first point."""
    points = np.asarray(ring, "<f8").reshape(-1, 2)
    if not np.array_equal(points[0], points[-1]):
        points = np.concatenate((points, points[:1]))
    return points


def multipolygon_wkb(polygons: Iterable[Sequence[Sequence[float]]]) -> bytes:
    """ISO WKB, little-endian, 2-D: one Polygon per part, exterior ring first, then holes."""
    parts = [polygon_wkb(polygon) for polygon in polygons]
    return struct.pack("<BII", _LITTLE_ENDIAN, _WKB_MULTIPOLYGON, len(parts)) + b"".join(parts)


def polygon_wkb(rings: Sequence[Sequence[float]]) -> bytes:
    out = [struct.pack("<BII", _LITTLE_ENDIAN, _WKB_POLYGON, len(rings))]
    for ring in rings:
        points = ring_points(ring)
        out += [struct.pack("<I", len(points)), points.tobytes()]
    return b"".join(out)
