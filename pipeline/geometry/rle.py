"""COCO RLE, both ways: a region's RLE built from its bbox crop (never from a full-image
mask), and decoded back inside its own box.

COCO RLE runs go column-major over the whole image and alternate, starting with zeros;
pycocotools compresses the runs and is the reference for area and bbox.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "compressed",
    "ones_runs",
    "region_crop",
    "run_lengths_from_crop",
    "runs_of_counts",
    "runs_of_many",
]


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


def runs_of_counts(counts: str) -> npt.NDArray[np.int64]:
    """Uncompressed runs of COCO compressed ``counts``, as pycocotools' ``rleFrString`` reads them.

    Each value is 5-bit chunks, low chunk first, offset by 48 into printable ASCII; 0x20 in a
    chunk means another follows and 0x10 in the last one makes the value negative. From the
    fourth value on, each is stored as its difference from the value two before it.
    """
    runs, _ = runs_of_many([counts])
    return runs


def runs_of_many(counts: Sequence[str]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.intp]]:
    """``(runs, heads)``: the uncompressed runs of many RLEs decoded at once, RLE i's being
    ``runs[heads[i]:heads[i + 1]]``; an image's regions cost a few array calls, not a few each."""
    sizes = np.fromiter((len(c) for c in counts), np.intp, len(counts))
    text = "".join(counts)
    chunks = np.frombuffer(text.encode("ascii"), np.uint8).astype(np.int64) - 48
    last = (chunks & 0x20) == 0
    string_ends = np.cumsum(sizes)
    if len(chunks) and (chunks.min() < 0 or chunks.max() > 0x3F):
        raise ValueError(f"not COCO compressed RLE counts: {_first_bad(counts)!r}")
    if not last[string_ends[sizes > 0] - 1].all():
        raise ValueError(f"not COCO compressed RLE counts: {_first_bad(counts)!r}")
    ends = np.flatnonzero(last)
    firsts = np.append(0, ends[:-1] + 1)[: len(ends)]
    shift = 5 * (np.arange(len(chunks)) - np.repeat(firsts, ends - firsts + 1))
    values = np.add.reduceat((chunks & 0x1F) << shift, firsts) if len(chunks) else chunks
    negative = (chunks[ends] & 0x10) != 0
    values[negative] |= np.left_shift(-1, shift[ends][negative] + 5)
    per = np.bincount(np.searchsorted(string_ends, ends, side="right"), minlength=len(counts))
    heads = (np.cumsum(per) - per).astype(np.intp)
    within = np.arange(len(values)) - np.repeat(heads, per)
    # From the fourth value on, each adds to the run two before it: running sums over each
    # RLE's odd values and over its even values after the first.
    runs = values.copy()
    for parity in (1, 0):
        chosen = (within % 2 == parity) & (within > 0)
        total = np.concatenate(([0], np.cumsum(np.where(chosen, values, 0))))
        runs[chosen] = (total[1:] - np.repeat(total[heads], per))[chosen]
    return runs, heads


def ones_runs(
    counts: Sequence[str], *, height: int, width: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.intp]]:
    """``(starts, lengths, owner)``: every run of ones of many RLEs on one height x width image,
    as column-major pixel offsets, and the RLE each came from. Empty runs are left out."""
    runs, heads = runs_of_many(counts)
    per = np.diff(np.append(heads, len(runs)))
    owner = np.repeat(np.arange(len(counts)), per)
    total = np.concatenate(([0], np.cumsum(runs)))
    area = total[heads + per] - total[heads]
    if (runs < 0).any() or (area > height * width).any():
        raise ValueError(f"RLE counts do not fit a {width}x{height} image")
    starts = total[:-1] - np.repeat(total[heads], per)
    ones = ((np.arange(len(runs)) - np.repeat(heads, per)) % 2 == 1) & (runs > 0)
    return starts[ones], runs[ones], owner[ones]


def _first_bad(counts: Sequence[str]) -> str:
    for text in counts:
        chunks = np.frombuffer(text.encode("ascii"), np.uint8).astype(np.int64) - 48
        if len(chunks) and (chunks.min() < 0 or chunks.max() > 0x3F or chunks[-1] & 0x20):
            return text[:40]
    return ""


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
