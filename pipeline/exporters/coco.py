"""COCO instances JSON from a run's tables.

A region with one exterior ring and no holes is written as a polygon; anything else (holes,
several parts) as compressed RLE with ``iscrowd=0``, since COCO polygons cannot express holes.
``area`` and ``bbox`` are pycocotools' on the segmentation exactly as written, which is what
``COCOeval`` will compute from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
from pycocotools import mask as mask_utils


def coco_categories(class_names: Sequence[str], background: int | None) -> list[dict[str, Any]]:
    """Category id = class id, stable across runs of one model; the background class is left out."""
    return [
        {"id": class_id, "name": name, "supercategory": "prelabel"}
        for class_id, name in enumerate(class_names)
        if class_id != background
    ]


def coco_from_tables(
    images: pa.Table, regions: pa.Table, class_names: Sequence[str], background: int | None
) -> dict[str, Any]:
    ok = sorted((r for r in images.to_pylist() if r["status"] == "ok"), key=lambda r: r["key"])
    coco_images = [
        {"id": n, "file_name": r["key"], "width": r["width"], "height": r["height"]}
        for n, r in enumerate(ok, start=1)
    ]
    by_image = {r["image_id"]: img for r, img in zip(ok, coco_images, strict=True)}
    rows = [r for r in regions.to_pylist() if r["image_id"] in by_image]
    rows.sort(key=lambda r: (by_image[r["image_id"]]["id"], r["region_index"]))
    annotations = []
    for n, row in enumerate(rows, start=1):
        image = by_image[row["image_id"]]
        segmentation = coco_segmentation(row, height=image["height"], width=image["width"])
        rle = segmentation_rle(segmentation, height=image["height"], width=image["width"])
        annotations.append(
            {
                "id": n,
                "image_id": image["id"],
                "category_id": row["class_id"],
                "segmentation": segmentation,
                "area": int(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": 0,
                "score": round(float(row["score"]), 4),
            }
        )
    return {
        "info": {"description": "prelabel pre-labels for review"},
        "images": coco_images,
        "annotations": annotations,
        "categories": coco_categories(class_names, background),
    }


def coco_segmentation(row: dict[str, Any], *, height: int, width: int) -> Any:
    polygons = row["polygons"]
    if len(polygons) == 1 and len(polygons[0]) == 1:
        return [list(polygons[0][0])]
    return {"size": [height, width], "counts": row["rle"]}


def segmentation_rle(segmentation: Any, *, height: int, width: int) -> dict[str, Any]:
    if isinstance(segmentation, dict):
        return segmentation
    return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))  # type: ignore[no-any-return]
