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
from pycocotools import mask as mask_utils

from pipeline.exporters.view import ExportOptions, RunView


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
    images = {
        row["image_id"]: {
            "id": coco_id(str(row["image_id"])),
            "file_name": row["key"],
            "width": row["width"],
            "height": row["height"],
        }
        for row in view.ok_images()
    }
    annotations: list[dict[str, Any]] = []
    # Polygons drawn as pycocotools draws them, grouped by image size: one call per size
    # measures them all (index in annotations, rings).
    drawn: dict[tuple[int, int], list[tuple[int, list[list[float]]]]] = defaultdict(list)
    for row in view.regions.select(_COLUMNS).to_pylist():
        image = images[row["image_id"]]
        segmentation = coco_segmentation(row, height=image["height"], width=image["width"])
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
    return {
        "info": {
            "description": "prelabel pre-labels for review",
            "model_version": view.model.model_version,
        },
        "images": list(images.values()),
        "annotations": annotations,
        "categories": coco_categories(view.class_names, view.background),
    }


_COLUMNS = [
    "image_id",
    "region_id",
    "class_id",
    "score",
    "area",
    "bbox",
    "polygons",
    "rle",
    "fidelity",
    "geometry",
]


def _areas_and_boxes(
    polygons: list[list[list[float]]], height: int, width: int
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
    uri = view.layout.export("coco.json")
    view.layout.storage.write_atomic(uri, orjson.dumps(coco_from_view(view)))
    return (uri,)


def coco_segmentation(row: dict[str, Any], *, height: int, width: int) -> Any:
    polygons = row["polygons"]
    if row["geometry"] == "polygon" and all(len(polygon) == 1 for polygon in polygons):
        return [list(polygon[0]) for polygon in polygons]
    return {"size": [height, width], "counts": row["rle"]}
