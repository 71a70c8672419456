"""COCO RLE of a region built from its bbox crop, never from a full-image mask.

COCO RLE runs go column-major over the whole image and alternate, starting with zeros;
pycocotools compresses the runs and is the reference for area and bbox.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from pycocotools import mask as mask_utils

__all__ = ["rle_from_crop", "run_lengths_from_crop"]


def run_lengths_from_crop(
    crop: npt.NDArray[np.bool_], *, x0: int, y0: int, height: int, width: int
) -> npt.NDArray[np.int64]:
    """Uncompressed COCO runs of a crop placed at (x0, y0) on a height x width image.

    Costs O(crop) memory: runs start and end where the padded crop changes down a column.
    """
    crop_height, crop_width = crop.shape
    if x0 < 0 or y0 < 0 or x0 + crop_width > width or y0 + crop_height > height:
        raise ValueError(
            f"crop {crop_width}x{crop_height} at ({x0}, {y0}) is outside the {width}x{height} image"
        )
    columns = np.zeros((crop_width, crop_height + 2), np.bool_)
    columns[:, 1:-1] = crop.T
    # Changes come column by column, each column's as start, end, start, end, ...
    column, row = np.nonzero(columns[:, 1:] != columns[:, :-1])
    edges = np.empty(len(row) + 2, np.int64)
    edges[0], edges[-1] = 0, height * width
    edges[1:-1] = (column + x0) * height + (row + y0)
    if crop_height == height:
        # A run ending at the bottom of a column and going on at the top of the next is one.
        joined = np.flatnonzero(edges[2:-2:2] == edges[3:-1:2]) * 2 + 2
        edges = np.delete(edges, np.concatenate((joined, joined + 1)))
    runs = edges[1:] - edges[:-1]
    # pycocotools ends on the last run of ones; only the leading run of zeros may be empty.
    return runs[:-1] if len(runs) > 1 and runs[-1] == 0 else runs


def rle_from_crop(crop: npt.NDArray[np.bool_], *, x0: int, y0: int, height: int, width: int) -> str:
    """Compressed COCO ``counts`` of a crop placed at (x0, y0), as ``pycocotools.encode`` gives."""
    runs = run_lengths_from_crop(crop, x0=x0, y0=y0, height=height, width=width)
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": runs.tolist()}, height, width)
    counts: bytes = rle["counts"]
    return counts.decode("ascii")
