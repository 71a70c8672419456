"""COCO RLE of a region built from its bbox crop, never from a full-image mask.

COCO RLE runs go column-major over the whole image and alternate, starting with zeros;
pycocotools compresses the runs and is the reference for area and bbox.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["compressed", "run_lengths_from_crop"]


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


def compressed(counts: npt.NDArray[np.int64], heads: npt.NDArray[np.intp]) -> list[str]:
    """COCO's compressed ``counts`` strings of many RLEs at once, as pycocotools writes them.

    ``counts[heads[i]:heads[i + 1]]`` are RLE i's runs. Each run from the fourth on is
    written as its difference from the run two before, as a signed number in 5-bit groups,
    low first, each but the last with a continuation bit, offset into ASCII from 48.
    """
    lengths = np.diff(np.append(heads, len(counts)))
    within = np.arange(len(counts)) - np.repeat(heads, lengths)
    value = counts.astype(np.int64)
    later = np.flatnonzero(within > 2)
    value[later] -= counts[later - 2]
    # Groups needed: the bits of the value and its sign bit, five at a time (frexp's
    # exponent is the bit length, exactly, for integers under 2**53).
    bits = np.frexp(np.where(value < 0, ~value, value).astype(np.float64))[1] + 1
    width = np.maximum(1, -(-bits // 5))
    owner = np.repeat(np.arange(len(value)), width)
    group = np.arange(len(owner)) - np.repeat(np.cumsum(width) - width, width)
    chars = (value[owner] >> (5 * group)) & 0x1F
    chars |= (group < width[owner] - 1) << 5
    text = (chars + 48).astype(np.uint8).tobytes().decode("ascii")
    ends = np.cumsum(np.add.reduceat(width, heads)).tolist() if len(heads) else []
    return [text[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]
