"""COCO instances JSON.

A region the fidelity gate kept as polygons, none with holes, is written as polygons (several
parts are several lists); anything else as compressed RLE with ``iscrowd=0``, since COCO polygons
cannot express holes. ``area`` and ``bbox`` are pycocotools' on the segmentation exactly as
written, which is what ``COCOeval`` computes from it. Ids derive from the ledger's stable ids,
so re-exporting, or exporting after an incremental run, keeps every id it had.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
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


def coco_from_view(view: RunView) -> dict[str, Any]:
    """The whole document in memory; the export writes the same bytes part by part."""
    parts = [coco_of_part(part) for part in view.parts(_COLUMNS)]
    return {
        "info": coco_info(view),
        "images": [image for images, _ in parts for image in images],
        "annotations": [annotation for _, annotations in parts for annotation in annotations],
        "categories": coco_categories(view.class_names, view.background),
    }


def coco_info(view: RunView) -> dict[str, Any]:
    return {
        "description": "prelabel pre-labels for review",
        "model_version": view.model.model_version,
    }


def coco_of_part(part: Part) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The images and annotations of a part of the run, in its order."""
    images = coco_images(part)
    return list(images.values()), coco_annotations(part, images)


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


def coco_annotations(part: Part, images: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The part's regions as COCO annotations of ``images``, built column by column: a part
    holds tens of thousands of regions, too many for a Python dict of each row first."""
    regions = part.regions
    if not regions.num_rows:
        return []
    column = {name: regions.column(name).to_pylist() for name in _LIST_COLUMNS}
    boxes = regions.column("bbox").combine_chunks().values.to_numpy().astype(np.float64)
    polygons = _polygons(regions.column("polygons"), regions.column("geometry"))
    annotations: list[dict[str, Any]] = []
    # Polygons drawn as pycocotools draws them, grouped by image size: one call per size
    # measures them all (index in annotations, rings).
    drawn: dict[tuple[int, int], list[tuple[int, list[Any]]]] = defaultdict(list)
    rows = zip(
        *(column[name] for name in _LIST_COLUMNS),
        boxes.reshape(-1, 4).tolist(),
        polygons,
        strict=True,
    )
    for image_id, region_id, class_id, score, area, rle, fidelity, bbox, shape in rows:
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
                "id": coco_id(region_id),
                "image_id": image["id"],
                "category_id": class_id,
                "segmentation": segmentation,
                "area": area,
                "bbox": bbox,
                "iscrowd": 0,
                "score": round(score, 4),
            }
        )
    for (height, width), shapes in drawn.items():
        areas, found = _areas_and_boxes([rings for _, rings in shapes], height, width)
        for (index, _), area, box in zip(shapes, areas.tolist(), found.tolist(), strict=True):
            annotations[index]["area"], annotations[index]["bbox"] = area, box
    return annotations


_LIST_COLUMNS = ("image_id", "region_id", "class_id", "score", "area", "rle", "fidelity")
_COLUMNS = (*_LIST_COLUMNS, "bbox", "geometry", "polygons")


def _polygons(
    column: pa.ChunkedArray, geometry: pa.ChunkedArray
) -> list[list[npt.NDArray[np.float32]] | None]:
    """Each region's COCO polygons, one flat x, y array per part, as views into one array of
    coordinates (tens of thousands of vertices per image, too many to turn into Python
    floats); None for a region written as RLE: the fidelity gate chose it, or a part has
    holes, which COCO polygons cannot express."""
    regions = column.combine_chunks()
    parts = regions.values
    rings = parts.values
    coordinates = rings.values.to_numpy()
    region_at, part_at, ring_at = (a.offsets.to_numpy() for a in (regions, parts, rings))
    holed = np.concatenate(([0], np.cumsum(np.diff(part_at) != 1)))
    plain = (holed[region_at[1:]] == holed[region_at[:-1]]).tolist()
    polygon = pc.equal(geometry, "polygon").to_numpy(zero_copy_only=False).tolist()
    first = part_at[:-1]
    starts = ring_at[first].tolist()
    ends = ring_at[np.minimum(first + 1, len(ring_at) - 1)].tolist()
    at = region_at.tolist()
    return [
        [coordinates[starts[j] : ends[j]] for j in range(at[k], at[k + 1])]
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


def export_coco(view: RunView, options: ExportOptions) -> tuple[str, ...]:
    """COCO lists every image before any annotation, so the run is read in two passes: its
    images files for the images, then its records for the annotations. Nothing is spooled:
    a million images' annotations are tens of GB."""
    uri = view.layout.export("coco.json")
    with view.layout.storage.write_stream(uri) as out:
        out.write(orjson.dumps({"info": coco_info(view)})[:-1] + b',"images":')
        images = JsonArray(out)
        for part in view.parts(regions=None):
            images.extend(list(coco_images(part).values()))
        images.close()
        out.write(b',"annotations":')
        annotations = JsonArray(out)
        for part in view.parts(_COLUMNS):
            annotations.extend(coco_annotations(part, coco_images(part)))
        annotations.close()
        categories = coco_categories(view.class_names, view.background)
        out.write(b',"categories":' + orjson.dumps(categories) + b"}")
    return (uri,)
