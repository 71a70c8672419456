"""Parquet for analysis: the regions with the image columns a user needs, and every image row.

``regions.parquet`` keeps polygons as nested lists, so it reads back exactly as the records;
the ``geometry`` column stays the fidelity gate's "polygon"/"rle". With ``wkb`` it also gets
a ``wkb`` column and GeoParquet 1.1 ``geo`` metadata, so GIS tools read the regions as
MultiPolygons. A region the gate sent to RLE gets its mask's exact pixel boundary there, not
the polygons the gate rejected. Coordinates are pixels, so ``crs`` is null: GeoParquet's
"no CRS", where a missing key would mean longitude/latitude.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Sequence
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pycocotools import mask as mask_utils

from pipeline.geometry.polygons import polygons_from_mask
from pipeline.run.records import Polygon
from pipeline.run.tables import IMAGES_SCHEMA, REGIONS_SCHEMA
from pipeline.run.view import ExportOptions, Part, RunView

IMAGE_COLUMNS = ("key", "uri", "width", "height", "model_version")
WKB_COLUMN = "wkb"
GEOPARQUET_VERSION = "1.1.0"

_LITTLE_ENDIAN = 1
_WKB_POLYGON = 3
_WKB_MULTIPOLYGON = 6


# A row group is written when either is reached: a run's first 65,536 regions make one group,
# as a whole-table write makes it, unless they hold more bytes, as polygons of many vertices
# do. The rows held are slices of whole shards, which stay in memory until written: bytes, not
# rows, bound that, whatever the regions look like.
ROW_GROUP_ROWS = 1 << 16
ROW_GROUP_BYTES = 64 << 20
# images.parquet's groups: 65,536 image rows wait beside a regions group otherwise (about 25 MB
# of ids, URIs and timings), in memory at the same time.
IMAGE_GROUP_BYTES = 8 << 20


def export_parquet(view: RunView, options: ExportOptions) -> tuple[str, ...]:
    """Both files written as the run is read, in row groups; with ``wkb`` a first pass over
    the shapes finds the bounds GeoParquet's metadata needs before the first row."""
    regions_uri = view.layout.export("regions.parquet")
    images_uri = view.layout.export("images.parquet")
    schema = _regions_schema(options.wkb)
    if options.wkb:
        schema = schema.with_metadata({b"geo": geo_metadata(_run_bounds(view))})
    storage = view.layout.storage
    with (
        storage.write_stream(regions_uri) as regions_out,
        storage.write_stream(images_uri) as images_out,
        _RowGroups(regions_out, schema, ROW_GROUP_BYTES) as regions,
        _RowGroups(images_out, IMAGES_SCHEMA, IMAGE_GROUP_BYTES) as images,
    ):
        for part in view.parts():
            table = regions_with_images(part)
            if options.wkb:
                table = table.append_column(WKB_COLUMN, wkb_column(table))
            regions.add(table)
            images.add(part.images)
    return (regions_uri, images_uri)


class _RowGroups:
    """Tables gathered into row groups of ``ROW_GROUP_ROWS`` rows or ``max_bytes`` bytes,
    whichever comes first, and written as they fill."""

    def __init__(self, out: BinaryIO, schema: pa.Schema, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.writer = pq.ParquetWriter(out, schema, compression="zstd")
        self.schema = schema
        self.pending: list[pa.Table] = []
        self.rows = self.bytes = 0
        self.written = False

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.rows += table.num_rows
        self.bytes += table.nbytes
        if self.rows >= ROW_GROUP_ROWS or self.bytes >= self.max_bytes:
            self._flush()

    def __enter__(self) -> _RowGroups:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        """The last rows flushed and the footer written; after an error only the writer
        closed, its file being discarded whole."""
        if kind is None:
            self._flush()
        self.writer.close()

    def _flush(self) -> None:
        """An empty run still gets its one empty row group, as a whole-table write does."""
        if self.pending or not self.written:
            table = pa.concat_tables(self.pending) if self.pending else self.schema.empty_table()
            self.writer.write_table(table.replace_schema_metadata(self.schema.metadata))
            self.written = True
        self.pending, self.rows, self.bytes = [], 0, 0


def _regions_schema(wkb: bool) -> pa.Schema:
    schema = REGIONS_SCHEMA
    for name in IMAGE_COLUMNS:
        schema = schema.append(IMAGES_SCHEMA.field(name))
    return schema.append(pa.field(WKB_COLUMN, pa.binary())) if wkb else schema


def regions_with_images(part: Part) -> pa.Table:
    """The regions in their order, each with its image's columns appended."""
    rows = pc.index_in(part.regions["image_id"], part.images["image_id"])
    per_region = part.images.select(list(IMAGE_COLUMNS)).take(rows)
    table = part.regions
    for name in IMAGE_COLUMNS:
        table = table.append_column(per_region.schema.field(name), per_region[name])
    return table


def wkb_column(regions: pa.Table) -> pa.Array:
    """Each region as a WKB MultiPolygon: its polygons, or its mask's exact pixel boundary."""
    return pa.array([multipolygon_wkb(polygons) for polygons in _shapes(regions)], pa.binary())


def geo_metadata(box: list[float] | None) -> bytes:
    """GeoParquet's ``geo`` metadata naming the WKB column; ``box`` over every point."""
    column: dict[str, Any] = {"encoding": "WKB", "geometry_types": ["MultiPolygon"], "crs": None}
    if box is not None:
        column["bbox"] = box
    geo = {
        "version": GEOPARQUET_VERSION,
        "primary_column": WKB_COLUMN,
        "columns": {WKB_COLUMN: column},
    }
    return json.dumps(geo).encode()


def _shapes(regions: pa.Table) -> list[Sequence[Polygon]]:
    return [
        row["polygons"] if row["geometry"] == "polygon" else mask_polygons(row)
        for row in regions.select(
            ["polygons", "geometry", "rle", "bbox", "height", "width"]
        ).to_pylist()
    ]


def _run_bounds(view: RunView) -> list[float] | None:
    boxes = [
        box
        for part in view.parts()
        if (box := bounds(_shapes(regions_with_images(part)))) is not None
    ]
    if not boxes:
        return None
    every = np.asarray(boxes)
    return [*every[:, :2].min(axis=0).tolist(), *every[:, 2:].max(axis=0).tolist()]


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
