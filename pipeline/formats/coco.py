"""COCO instances JSON.

A region the fidelity gate kept as polygons, none with holes, is written as polygons (several
parts are several lists); anything else as compressed RLE with ``iscrowd=0``, since COCO polygons
cannot express holes. ``area`` and ``bbox`` are pycocotools' on the segmentation exactly as
written, which is what ``COCOeval`` computes from it. Ids derive from the ledger's stable ids,
so re-exporting, or exporting after an incremental run, keeps every id it had.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
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
    images = {
        row["image_id"]: {
            "id": coco_id(str(row["image_id"])),
            "file_name": row["key"],
            "width": row["width"],
            "height": row["height"],
        }
        for row in part.ok_images()
    }
    annotations: list[dict[str, Any]] = []
    # Polygons drawn as pycocotools draws them, grouped by image size: one call per size
    # measures them all (index in annotations, rings).
    drawn: dict[tuple[int, int], list[tuple[int, list[Any]]]] = defaultdict(list)
    shapes = _shapes(part.regions.column("polygons"))
    for row, parts in zip(part.regions.select(_ROW_COLUMNS).to_pylist(), shapes, strict=True):
        image = images[row["image_id"]]
        segmentation = _segmentation(row, parts, height=image["height"], width=image["width"])
        area, bbox = row["area"], [float(v) for v in row["bbox"]]
        if isinstance(segmentation, list) and row["fidelity"] < 1.0:
            drawn[image["height"], image["width"]].append((len(annotations), segmentation))
        # Otherwise the segmentation draws exactly the mask, whose area and box the row holds.
        annotations.append(
            {
                "id": coco_id(row["region_id"]),
                "image_id": image["id"],
                "category_id": row["class_id"],
                "segmentation": segmentation,
                "area": area,
                "bbox": bbox,
                "iscrowd": 0,
                "score": round(float(row["score"]), 4),
            }
        )
    for (height, width), polygons in drawn.items():
        areas, boxes = _areas_and_boxes([rings for _, rings in polygons], height, width)
        for (index, _), area, box in zip(polygons, areas.tolist(), boxes.tolist(), strict=True):
            annotations[index]["area"], annotations[index]["bbox"] = area, box
    return list(images.values()), annotations


_ROW_COLUMNS = (
    "image_id",
    "region_id",
    "class_id",
    "score",
    "area",
    "bbox",
    "rle",
    "fidelity",
    "geometry",
)
_COLUMNS = (*_ROW_COLUMNS, "polygons")


def _shapes(column: pa.ChunkedArray) -> list[list[list[npt.NDArray[np.float32]]]]:
    """Each region's parts, each part's rings as views into one flat array of coordinates:
    tens of thousands of vertices per image, too many to turn into Python floats."""
    regions = column.combine_chunks()
    parts = regions.values
    rings = parts.values
    coordinates = rings.values.to_numpy()
    region_at, part_at, ring_at = (a.offsets.to_numpy().tolist() for a in (regions, parts, rings))
    return [
        [
            [coordinates[ring_at[i] : ring_at[i + 1]] for i in range(part_at[j], part_at[j + 1])]
            for j in range(region_at[k], region_at[k + 1])
        ]
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
    """Images go straight to the file and annotations to a local spool, appended after them:
    COCO lists every image before any annotation, and the run is read once."""
    uri = view.layout.export("coco.json")
    with view.layout.storage.write_stream(uri) as out, tempfile.TemporaryFile() as spool:
        out.write(orjson.dumps({"info": coco_info(view)})[:-1] + b',"images":')
        images, annotations = JsonArray(out), JsonArray(spool)
        for part in view.parts(_COLUMNS):
            part_images, part_annotations = coco_of_part(part)
            images.extend(part_images)
            annotations.extend(part_annotations)
        images.close()
        annotations.close()
        out.write(b',"annotations":')
        spool.seek(0)
        shutil.copyfileobj(spool, out)
        categories = coco_categories(view.class_names, view.background)
        out.write(b',"categories":' + orjson.dumps(categories) + b"}")
    return (uri,)


def _segmentation(
    row: dict[str, Any], parts: list[list[npt.NDArray[np.float32]]], *, height: int, width: int
) -> Any:
    if row["geometry"] == "polygon" and all(len(rings) == 1 for rings in parts):
        return [rings[0] for rings in parts]
    return {"size": [height, width], "counts": row["rle"]}
