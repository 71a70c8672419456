"""Review thumbnails: an image, small, with its class map painted over it.

Inside a region the class colour is blended over the picture (``ALPHA``); the region's edge pixels
are painted solid, so thin and touching regions stay visible at a small size. The class map comes
from the regions' RLE (``class_map_of``) and is shrunk with nearest-neighbour sampling, so every
painted pixel is a class the model gave. The original is read again from its URI and checked
against the content hash the run recorded: when it cannot be read, or has changed since it was
labeled, the overlay goes on a neutral grey and the thumbnail says why.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from pipeline.decode import DecodeError, decode_image
from pipeline.exporters.class_maps import class_map_of
from pipeline.storage import Storage, StorageError

SIDE = 256  # longer side of a thumbnail; smaller images keep their size
ALPHA = 0.45  # weight of the class colour inside a region
NEUTRAL = (200, 200, 200)  # stands in for an original that cannot be shown


@dataclass(frozen=True, slots=True)
class Thumbnail:
    png: bytes
    width: int
    height: int
    note: str | None  # why the overlay is not on the original, when it is not


def thumbnail_size(width: int, height: int, side: int = SIDE) -> tuple[int, int]:
    """(width, height) with the longer side at most ``side``: ``decode_image``'s own rounding,
    so a decoded original and its shrunk class map have the same size."""
    scale = min(1.0, side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def make_thumbnail(
    image: Mapping[str, Any],
    regions: Iterable[Mapping[str, Any]],
    colours: Sequence[tuple[int, int, int]],
    background: int | None,
    *,
    originals: Storage | None,
    max_pixels: int,
    side: int = SIDE,
) -> Thumbnail:
    """``image`` is an ok row of the images table, ``regions`` its region rows (``class_id``,
    ``rle``); ``originals`` reads its ``uri``, or None to paint on grey without reading."""
    width, height = image["width"], image["height"]
    size = thumbnail_size(width, height, side)
    class_map = class_map_of(regions, height, width, background)
    small = np.asarray(Image.fromarray(class_map).resize(size, Image.Resampling.NEAREST))
    base, note = _original(image, size, side, originals, max_pixels)
    if base is None:
        base = np.empty((size[1], size[0], 3), np.uint8)
        base[:] = NEUTRAL
    return Thumbnail(_png(paint(base, small, colours, background)), *size, note)


def paint(
    base: npt.NDArray[np.uint8],
    class_map: npt.NDArray[np.uint8],
    colours: Sequence[tuple[int, int, int]],
    background: int | None,
) -> npt.NDArray[np.uint8]:
    """``base`` (H x W x 3) with every non-background pixel blended towards its class colour,
    and solid where a 4-neighbour has another class."""
    labelled = np.ones(class_map.shape, bool) if background is None else class_map != background
    edge = np.zeros(class_map.shape, bool)
    down, right = class_map[1:] != class_map[:-1], class_map[:, 1:] != class_map[:, :-1]
    edge[1:] |= down
    edge[:-1] |= down
    edge[:, 1:] |= right
    edge[:, :-1] |= right
    edge &= labelled
    colour = np.asarray(colours, np.float32)[class_map]
    out = base.astype(np.float32)
    out[labelled] = (1 - ALPHA) * out[labelled] + ALPHA * colour[labelled]
    out[edge] = colour[edge]
    return np.rint(out).astype(np.uint8)


def _original(
    image: Mapping[str, Any],
    size: tuple[int, int],
    side: int,
    originals: Storage | None,
    max_pixels: int,
) -> tuple[npt.NDArray[np.uint8] | None, str | None]:
    if originals is None:
        return None, None
    uri = image["uri"]
    try:
        decoded = decode_image(uri, originals.read(uri), max_side=side, max_pixels=max_pixels)
    except (StorageError, DecodeError) as exc:
        return None, f"original not readable: {exc}"
    if decoded.content_hash != image["content_hash"]:
        return None, "original changed since it was labeled"
    if decoded.pixels.shape[:2] != (size[1], size[0]):  # same bytes, another decoder's size
        return None, f"original decodes to {decoded.width}x{decoded.height}, not as labeled"
    return decoded.pixels, None


def _png(pixels: npt.NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
