"""Class maps painted back from regions' COCO RLE, and one colour per class for every exporter.

The RLE is a region's truth; its polygons are a drawing that the fidelity gate may have found too
coarse. Each region is decoded once and only inside its own box: pycocotools' ``decode`` fills a
whole image per region, height x width bytes for every region of the image.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.geometry.rle import ones_runs, region_crop

__all__ = ["class_colours", "class_map_of", "voc_colour"]


def class_map_of(
    regions: Iterable[Mapping[str, Any]], height: int, width: int, background: int | None
) -> npt.NDArray[np.uint8]:
    """The image's class map from its region rows (``class_id``, ``rle``); pixels no region
    covers get ``background`` (0 when None). Where regions overlap, which hole filling allows,
    they are painted in order and the later one wins."""
    rows = list(regions)
    fill = background or 0
    starts, lengths, owner = ones_runs([r["rle"] for r in rows], height=height, width=width)
    order = np.argsort(starts, kind="stable")
    starts, ends, owner = starts[order], starts[order] + lengths[order], owner[order]
    if (starts[1:] < ends[:-1]).any():
        return _painted_in_order(rows, height, width, fill)
    # Regions that do not overlap tile the image's columns with their runs and the gaps
    # between them: one repeat paints it column-major.
    classes = np.array([r["class_id"] for r in rows], np.uint8)
    edges = np.empty(2 * len(starts) + 2, np.int64)
    edges[0], edges[1:-1:2], edges[2:-1:2], edges[-1] = 0, starts, ends, height * width
    values = np.full(2 * len(starts) + 1, fill, np.uint8)
    values[1::2] = classes[owner]
    columns = np.repeat(values, np.diff(edges)).reshape(width, height)
    return np.ascontiguousarray(columns.T)


def _painted_in_order(
    rows: list[Mapping[str, Any]], height: int, width: int, fill: int
) -> npt.NDArray[np.uint8]:
    out = np.full((height, width), fill, np.uint8)
    for region in rows:
        x0, y0, crop = region_crop(region["rle"], height=height, width=width)
        box = out[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]]
        box[crop] = region["class_id"]
    return out


def voc_colour(index: int) -> tuple[int, int, int]:
    """Pascal VOC's colour map: the index's bits dealt in turn to red, green and blue, from each
    channel's top bit down. Black for 0 and distinct for every index below 256."""
    red = green = blue = 0
    for bit in range(8):
        red |= ((index >> (3 * bit)) & 1) << (7 - bit)
        green |= ((index >> (3 * bit + 1)) & 1) << (7 - bit)
        blue |= ((index >> (3 * bit + 2)) & 1) << (7 - bit)
    return red, green, blue


def class_colours(count: int, background: int | None) -> list[tuple[int, int, int]]:
    """Class id -> colour, shared by the exports so a class looks the same in every tool.

    VOC's colour of the class id, except that the background class and class 0 swap colours,
    so the background is black whatever its id.
    """
    indices = list(range(count))
    if background is not None and 0 < background < count:
        indices[0], indices[background] = background, 0
    return [voc_colour(index) for index in indices]
