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

__all__ = ["class_colours", "class_map_of", "region_crop", "runs_of_counts", "voc_colour"]


def runs_of_counts(counts: str) -> npt.NDArray[np.int64]:
    """Uncompressed runs of COCO compressed ``counts``, as pycocotools' ``rleFrString`` reads them.

    Each value is 5-bit chunks, low chunk first, offset by 48 into printable ASCII; 0x20 in a
    chunk means another follows and 0x10 in the last one makes the value negative. From the
    fourth value on, each is stored as its difference from the value two before it.
    """
    if not counts:
        return np.zeros(0, np.int64)
    chunks = np.frombuffer(counts.encode("ascii"), np.uint8).astype(np.int64) - 48
    last = (chunks & 0x20) == 0
    if chunks.min() < 0 or chunks.max() > 0x3F or not last[-1]:
        raise ValueError(f"not COCO compressed RLE counts: {counts[:40]!r}")
    ends = np.flatnonzero(last)
    firsts = np.concatenate(([0], ends[:-1] + 1))
    shift = 5 * (np.arange(len(chunks)) - np.repeat(firsts, ends - firsts + 1))
    values = np.add.reduceat((chunks & 0x1F) << shift, firsts)
    negative = (chunks[ends] & 0x10) != 0
    values[negative] |= np.left_shift(-1, shift[ends][negative] + 5)
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def region_crop(counts: str, *, height: int, width: int) -> tuple[int, int, npt.NDArray[np.bool_]]:
    """``(x0, y0, crop)``: the mask of COCO ``counts`` on its tight box, whose corner is (x0, y0).

    Costs O(box), not O(image). COCO runs go down the columns; a run of ones crosses from one
    column into the next only when the mask touches both the bottom and the top row, so the box
    is then full height, and every run is one run down the box's columns too.
    """
    runs = runs_of_counts(counts)
    if runs.min(initial=0) < 0 or runs.sum() > height * width:
        raise ValueError(f"RLE counts do not fit a {width}x{height} image")
    starts, lengths = (np.cumsum(runs) - runs)[1::2], runs[1::2]
    starts, lengths = starts[lengths > 0], lengths[lengths > 0]
    if not len(starts):
        return 0, 0, np.zeros((0, 0), np.bool_)
    first_column, last_column = starts // height, (starts + lengths - 1) // height
    x0, x1 = int(first_column.min()), int(last_column.max()) + 1
    if (first_column != last_column).any():
        y0, y1 = 0, height
    else:
        y0, y1 = int((starts % height).min()), int(((starts + lengths - 1) % height).max()) + 1
    box_height, box_width = y1 - y0, x1 - x0
    at = (first_column - x0) * box_height + starts % height - y0
    # Down the box's columns: zeros up to each run of ones, the run, and zeros to the end.
    edges = np.concatenate(
        ([0], np.column_stack((at, at + lengths)).ravel(), [box_width * box_height])
    )
    values = np.arange(len(edges) - 1) % 2 == 1
    columns = np.repeat(values, np.diff(edges)).reshape(box_width, box_height)
    return x0, y0, columns.T


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
