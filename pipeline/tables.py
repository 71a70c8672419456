"""Arrow schemas and Parquet I/O for a run's two tables: regions and images.

Files are written whole (``write_atomic``), so a crash never leaves a truncated shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.records import ImageRecord, Region
from pipeline.storage import Storage

REGIONS_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("region_index", pa.int32()),  # position within the image, stable across reruns
        ("region_id", pa.string()),  # from image, content, model, config and index
        ("class_id", pa.int16()),
        ("class_name", pa.string()),
        ("score", pa.float32()),
        ("low_confidence_share", pa.float32()),
        ("area", pa.int64()),
        ("bbox", pa.list_(pa.int32(), 4)),
        # polygons -> rings (exterior first, then holes) -> flat x, y coordinates
        ("polygons", pa.list_(pa.list_(pa.list_(pa.float32())))),
        ("rle", pa.string()),
        ("fidelity", pa.float32()),
        ("vertices", pa.int32()),
        ("geometry", pa.string()),  # "polygon" or "rle", the fidelity gate's choice
    ]
)

IMAGES_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("key", pa.string()),
        ("uri", pa.string()),
        ("shard", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("retryable", pa.bool_()),
        ("size_bytes", pa.int64()),
        ("etag", pa.string()),
        ("content_hash", pa.string()),
        ("model_version", pa.string()),
        ("config_hash", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("model_width", pa.int32()),
        ("model_height", pa.int32()),
        ("mode", pa.string()),
        ("frames", pa.int32()),
        ("inference", pa.string()),
        ("engine", pa.string()),
        ("precision", pa.string()),
        ("region_count", pa.int32()),
        ("mean_confidence", pa.float32()),
        ("low_confidence_share", pa.float32()),
        ("boundary_uncertainty", pa.float32()),
        ("fragments", pa.int32()),
        ("review_priority", pa.float32()),
        ("read_ms", pa.float32()),
        ("decode_ms", pa.float32()),
        ("predict_ms", pa.float32()),
        ("regions_ms", pa.float32()),
    ]
)


def regions_table(
    regions: Sequence[Region], class_names: Sequence[str], lineage: Mapping[str, str]
) -> pa.Table:
    """``lineage`` maps each image id to what its labels derive from (content, model,
    config), so a region's id is the same on every rerun and differs when any of them does."""
    index: dict[str, int] = {}
    rows = []
    for region in regions:
        position = index.get(region.image_id, 0)
        index[region.image_id] = position + 1
        rows.append(
            {
                "image_id": region.image_id,
                "region_index": position,
                "region_id": stable_id(region.image_id, lineage[region.image_id], str(position)),
                "class_id": region.class_id,
                "class_name": class_names[region.class_id],
                "score": region.score,
                "low_confidence_share": region.low_confidence_share,
                "area": region.area,
                "bbox": list(region.bbox),
                "polygons": [[list(ring) for ring in polygon] for polygon in region.polygons],
                "rle": region.rle,
                "fidelity": region.fidelity,
                "vertices": region.vertices,
                "geometry": region.geometry,
            }
        )
    return pa.Table.from_pylist(rows, schema=REGIONS_SCHEMA)


def stable_id(*parts: str) -> str:
    """16 hex digits of sha256 over the parts: the same inputs give the same id on any run."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def images_table(images: Sequence[ImageRecord]) -> pa.Table:
    return pa.Table.from_pylist([dataclasses.asdict(i) for i in images], schema=IMAGES_SCHEMA)


def write_table(storage: Storage, uri: str, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    storage.write_atomic(uri, buffer.getvalue())


def read_tables(storage: Storage, uris: Sequence[str], schema: pa.Schema) -> pa.Table:
    """Concatenate shard files in the given order; no files gives an empty table."""
    tables = [pq.read_table(io.BytesIO(storage.read(uri)), schema=schema) for uri in uris]
    return pa.concat_tables(tables) if tables else schema.empty_table()
