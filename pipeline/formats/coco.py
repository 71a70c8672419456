"""COCO instances JSON.

A region the fidelity gate kept as polygons, none with holes, is written as polygons (several
parts are several lists); anything else as compressed RLE with ``iscrowd=0``, since COCO polygons
cannot express holes. ``area`` and ``bbox`` are pycocotools' on the segmentation exactly as
written, which is what ``COCOeval`` computes from it. Ids derive from the ledger's stable ids,
so re-exporting, or exporting after an incremental run, keeps every id it had.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pycocotools import mask as mask_utils

from pipeline.formats.streams import JsonArray
from pipeline.run.view import ExportOptions, Part, RunView


def coco_id(hex_id: str) -> int:
    """The first 13 hex digits (52 bits) of a stable id: an int that JSON readers keep exact."""
    return int(hex_id[:13], 16)


def coco_categories(class_names: Sequence[str], background: int | None) -> list[dict[str, Any]]:
    """Category id = class id, stable across runs of one model; the background class is left out."""
    return [
        {"id": class_id, "name": name, "supercategory": "prelabel"}
        for class_id, name in enumerate(class_names)
        if class_id != background
    ]


def coco_info(view: RunView) -> dict[str, Any]:
    return {
        "description": "prelabel pre-labels for review",
        "model_version": view.model.model_version,
    }


def coco_images(part: Part) -> dict[str, dict[str, Any]]:
    """Image id -> COCO image, for the part's labeled images."""
    return {
        row["image_id"]: {
            "id": coco_id(str(row["image_id"])),
            "file_name": row["key"],
            "width": row["width"],
            "height": row["height"],
        }
        for row in part.ok_images()
    }


def coco_annotations(regions: pa.Table, images: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Region rows (a part's) as COCO annotations of ``images``, built column by column: a
    part holds tens of thousands of regions, too many for a Python dict of each row first."""
    if not regions.num_rows:
        return []
    column = {name: regions.column(name).to_pylist() for name in _LIST_COLUMNS}
    boxes = regions.column("bbox").combine_chunks().values.to_numpy().astype(np.float64)
    scores = regions.column("score").to_numpy().astype(np.float64).round(4)
    polygons = _polygons(regions.column("polygons"), regions.column("geometry"))
    annotations: list[dict[str, Any]] = []
    # Polygons drawn as pycocotools draws them, grouped by image size: one call per size
    # measures them all (index in annotations, rings).
    drawn: dict[tuple[int, int], list[tuple[int, list[Any]]]] = defaultdict(list)
    rows = zip(
        *(column[name] for name in _LIST_COLUMNS),
        coco_ids(regions.column("region_id")),
        scores.tolist(),
        boxes.reshape(-1, 4).tolist(),
        polygons,
        strict=True,
    )
    for image_id, class_id, area, rle, fidelity, region_id, score, bbox, shape in rows:
        image = images[image_id]
        segmentation: Any
        if shape is None:
            segmentation = {"size": [image["height"], image["width"]], "counts": rle}
        else:
            segmentation = shape
            if fidelity < 1.0:
                drawn[image["height"], image["width"]].append((len(annotations), shape))
        # Otherwise the segmentation draws exactly the mask, whose area and box the row holds.
        annotations.append(
            {
                "id": region_id,
                "image_id": image["id"],
                "category_id": class_id,
                "segmentation": segmentation,
                "area": area,
                "bbox": bbox,
                "iscrowd": 0,
                "score": score,
            }
        )
    for (height, width), shapes in drawn.items():
        areas, found = _areas_and_boxes([rings for _, rings in shapes], height, width)
        for (index, _), area, box in zip(shapes, areas.tolist(), found.tolist(), strict=True):
            annotations[index]["area"], annotations[index]["bbox"] = area, box
    return annotations


def encoded_annotations(regions: pa.Table, image_id: str, *, height: int, width: int) -> bytes:
    """One image's region rows as its COCO annotations, JSON-encoded and comma-separated, as
    an export writes them; encoded where the image is labeled, so that the run's export only
    copies them (``export_coco``'s ``ahead``)."""
    image = {"id": coco_id(image_id), "height": height, "width": width}
    annotations = coco_annotations(regions, {image_id: image})
    return orjson.dumps(annotations, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]


def coco_ids(hex_ids: pa.ChunkedArray) -> list[int]:
    """``coco_id`` of every id of a column, in a few array operations where every id has the
    16 hex digits ``stable_id`` writes (tens of thousands of ``int()`` calls otherwise)."""
    ids = hex_ids.combine_chunks()
    if len(ids) and not ids.null_count and pc.all(pc.equal(pc.binary_length(ids), 16)).as_py():
        fixed = ids.cast(pa.binary(16))
        text = np.frombuffer(fixed.buffers()[1], np.uint8)
        text = text[16 * fixed.offset : 16 * (fixed.offset + len(fixed))].reshape(-1, 16)
        nibbles = _HEX_VALUE[text[:, :13]]
        if np.all(nibbles < 16):
            weights = np.left_shift(np.uint64(1), np.arange(48, -1, -4, dtype=np.uint64))
            return list((nibbles.astype(np.uint64) @ weights).tolist())
    return [coco_id(str(h)) for h in ids.to_pylist()]


_HEX_VALUE = np.full(256, 255, np.uint8)
for _digit in "0123456789abcdefABCDEF":
    _HEX_VALUE[ord(_digit)] = int(_digit, 16)

_LIST_COLUMNS = ("image_id", "class_id", "area", "rle", "fidelity")
_COLUMNS = (*_LIST_COLUMNS, "region_id", "score", "bbox", "geometry", "polygons")


def _polygons(
    column: pa.ChunkedArray, geometry: pa.ChunkedArray
) -> list[list[npt.NDArray[np.float32] | npt.NDArray[np.int32]] | None]:
    """Each region's COCO polygons, one flat x, y array per part, as views into one array of
    coordinates (tens of thousands of vertices per image, too many to turn into Python
    floats); None for a region written as RLE: the fidelity gate chose it, or a part has
    holes, which COCO polygons cannot express."""
    regions = column.combine_chunks()
    parts = regions.values
    rings = parts.values
    coordinates = rings.values.to_numpy()
    region_at, part_at, ring_at = (a.offsets.to_numpy() for a in (regions, parts, rings))
    # Traced rings run on pixel corners: a region whose coordinates are all whole numbers is
    # written as ints (half the time to write, a quarter fewer bytes). Decided per region,
    # so a region is written the same whatever else is exported with it.
    fractional = np.concatenate(([0], np.cumsum(coordinates != np.trunc(coordinates))))
    bounds = ring_at[part_at[region_at]]
    whole = (fractional[bounds[1:]] == fractional[bounds[:-1]]).tolist()
    exact = coordinates.astype(np.int32) if any(whole) else coordinates
    holed = np.concatenate(([0], np.cumsum(np.diff(part_at) != 1)))
    plain = (holed[region_at[1:]] == holed[region_at[:-1]]).tolist()
    polygon = pc.equal(geometry, "polygon").to_numpy(zero_copy_only=False).tolist()
    first = part_at[:-1]
    starts = ring_at[first].tolist()
    ends = ring_at[np.minimum(first + 1, len(ring_at) - 1)].tolist()
    at = region_at.tolist()
    return [
        [(exact if whole[k] else coordinates)[starts[j] : ends[j]] for j in range(at[k], at[k + 1])]
        if polygon[k] and plain[k]
        else None
        for k in range(len(regions))
    ]


def _areas_and_boxes(
    polygons: list[list[Any]], height: int, width: int
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.float64]]:
    """pycocotools' area and box of each polygon (its parts' union), as COCOeval's annToRLE
    computes them, in three calls for all of them instead of three per polygon."""
    rings = mask_utils.frPyObjects([ring for rings in polygons for ring in rings], height, width)
    merged, start = [], 0
    for parts in polygons:
        own = rings[start : start + len(parts)]
        merged.append(own[0] if len(own) == 1 else mask_utils.merge(own))
        start += len(parts)
    return mask_utils.area(merged), mask_utils.toBbox(merged)


def export_coco(
    view: RunView, options: ExportOptions, *, ahead: Mapping[str, Mapping[str, bytes]] | None = None
) -> tuple[str, ...]:
    """COCO lists every image before any annotation, so the run is read in two passes: its
    images files for the images, then its records for the annotations. Nothing is spooled:
    a million images' annotations are tens of GB.

    ``ahead``: annotations already encoded (``encoded_annotations``), by shard, then image id.
    When they hold every image of the view, they are written as they are and no records file
    is read: the same bytes, without the serial pass over every region at the end of a run."""
    uri = view.layout.export("coco.json")
    encoded = ahead if ahead is not None and _holds_all(view, ahead) else None
    with view.layout.storage.write_stream(uri) as out:
        out.write(orjson.dumps({"info": coco_info(view)})[:-1] + b',"images":')
        images = JsonArray(out)
        for part in view.parts(regions=None):
            images.extend(list(coco_images(part).values()))
        images.close()
        out.write(b',"annotations":')
        annotations = JsonArray(out)
        if encoded is None:
            for part in view.parts(_COLUMNS):
                annotations.extend(coco_annotations(part.regions, coco_images(part)))
        else:
            for part in view.parts(regions=None):
                rows = part.images.select(["image_id", "shard", "status"]).to_pylist()
                annotations.extend_encoded(
                    [encoded[r["shard"]][r["image_id"]] for r in rows if r["status"] == "ok"]
                )
        annotations.close()
        categories = coco_categories(view.class_names, view.background)
        out.write(b',"categories":' + orjson.dumps(categories) + b"}")
    return (uri,)


def _holds_all(view: RunView, ahead: Mapping[str, Mapping[str, bytes]]) -> bool:
    """Whether ``ahead`` has every labeled image of the view, each in the shard its latest
    row is in (a failed image has no annotations)."""
    for batch in view.rows.batches(("image_id", "shard", "status")):
        rows = zip(*(batch[c].to_pylist() for c in ("image_id", "shard", "status")), strict=True)
        if any(
            status == "ok" and image_id not in ahead.get(shard, {})
            for image_id, shard, status in rows
        ):
            return False
    return True
