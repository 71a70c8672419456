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

from pipeline.geometry.rle import region_crop

__all__ = ["class_colours", "class_map_of", "voc_colour"]


def class_map_of(
    regions: Iterable[Mapping[str, Any]], height: int, width: int, background: int | None
) -> npt.NDArray[np.uint8]:
    """The image's class map from its region rows (``class_id``, ``rle``); pixels no region
    covers get ``background`` (0 when None). Where regions overlap, which hole filling allows,
    they are painted in order and the later one wins."""
    out = np.full((height, width), background or 0, np.uint8)
    for region in regions:
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
