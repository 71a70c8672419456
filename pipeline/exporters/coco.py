"""COCO instances JSON.

A region the fidelity gate kept as polygons, none with holes, is written as polygons (several
parts are several lists); anything else as compressed RLE with ``iscrowd=0``, since COCO polygons
cannot express holes. ``area`` and ``bbox`` are pycocotools' on the segmentation exactly as
written, which is what ``COCOeval`` computes from it. Ids derive from the ledger's stable ids,
so re-exporting, or exporting after an incremental run, keeps every id it had.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

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
    annotations = []
    for row in view.regions.to_pylist():
        image = images[row["image_id"]]
        segmentation = coco_segmentation(row, height=image["height"], width=image["width"])
        if isinstance(segmentation, list) and row["fidelity"] == 1.0:
            # IoU 1: the polygons draw exactly the mask, whose area and box the row holds.
            area, bbox = row["area"], [float(v) for v in row["bbox"]]
        else:
            rle = segmentation_rle(segmentation, height=image["height"], width=image["width"])
            area, bbox = int(mask_utils.area(rle)), [float(v) for v in mask_utils.toBbox(rle)]
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
    return {
        "info": {
            "description": "prelabel pre-labels for review",
            "model_version": view.model.model_version,
        },
        "images": list(images.values()),
        "annotations": annotations,
        "categories": coco_categories(view.class_names, view.background),
    }


def export_coco(view: RunView, options: ExportOptions) -> tuple[str, ...]:
    uri = view.layout.export("coco.json")
    view.layout.storage.write_atomic(uri, json.dumps(coco_from_view(view)).encode())
    return (uri,)


def coco_segmentation(row: dict[str, Any], *, height: int, width: int) -> Any:
    polygons = row["polygons"]
    if row["geometry"] == "polygon" and all(len(polygon) == 1 for polygon in polygons):
        return [list(polygon[0]) for polygon in polygons]
    return {"size": [height, width], "counts": row["rle"]}


def segmentation_rle(segmentation: Any, *, height: int, width: int) -> dict[str, Any]:
    if isinstance(segmentation, dict):
        return segmentation
    return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))  # type: ignore[no-any-return]
