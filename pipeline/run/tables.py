"""Arrow schemas and Parquet I/O for a run's two tables: regions and images.

Files are written whole (``write_atomic``), so a crash never leaves a truncated shard.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.run.records import ImageRecord, RegionColumns

if TYPE_CHECKING:  # tracing workers build tables; they must not load storage (and torch)
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
    regions: RegionColumns, class_names: Sequence[str], lineage: Mapping[str, str]
) -> pa.Table:
    """``lineage`` maps each image id to what its labels derive from (content, model,
    config), so a region's id is the same on every rerun and differs when any of them does."""
    index: dict[str, int] = {}
    positions = []
    for image_id in regions.image_id:
        positions.append(index.get(image_id, 0))
        index[image_id] = positions[-1] + 1
    columns: dict[str, pa.Array | list[Any]] = {
        "image_id": regions.image_id,
        "region_index": positions,
        "region_id": [
            stable_id(image_id, lineage[image_id], str(position))
            for image_id, position in zip(regions.image_id, positions, strict=True)
        ],
        "class_id": regions.class_id,
        "class_name": [class_names[class_id] for class_id in regions.class_id],
        "score": regions.score,
        "low_confidence_share": regions.low_confidence_share,
        "area": regions.area,
        "bbox": pa.FixedSizeListArray.from_arrays(np.array(regions.bbox, np.int32).reshape(-1), 4),
        "polygons": pa.ListArray.from_arrays(
            regions.polygons,
            pa.ListArray.from_arrays(
                regions.parts, pa.ListArray.from_arrays(regions.rings, regions.coordinates)
            ),
        ),
        "rle": regions.rle,
        "fidelity": regions.fidelity,
        "vertices": regions.vertices,
        "geometry": regions.geometry,
    }
    return pa.Table.from_arrays(
        [
            column if isinstance(column, pa.Array) else pa.array(column, field.type)
            for field, column in ((f, columns[f.name]) for f in REGIONS_SCHEMA)
        ],
        schema=REGIONS_SCHEMA,
    )


def stable_id(*parts: str) -> str:
    """16 hex digits of sha256 over the parts: the same inputs give the same id on any run."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def images_table(images: Sequence[ImageRecord]) -> pa.Table:
    return pa.Table.from_pylist([i.row() for i in images], schema=IMAGES_SCHEMA)


def write_table(
    storage: Storage, uri: str, table: pa.Table, *, row_group_size: int | None = None
) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", row_group_size=row_group_size)
    storage.write_atomic(uri, buffer.getvalue())
