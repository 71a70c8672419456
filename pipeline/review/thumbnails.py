"""Review pictures of an image: a thumbnail with its class map painted on, and a larger view
with the class map as a layer of its own, so that the page can show the image with or without it.

A region is drawn as a semi-transparent fill (``ALPHA``) inside an opaque two-tone outline: its
edge pixels in the class colour and the pixels just inside them in black or white, whichever is
further from that colour. A fill alone fades into content of its own colour, and so does a line
of one colour; two strokes of opposite lightness cannot both fade, so every edge shows on any
picture. Every painted pixel lies inside a region the model gave. Strokes are a pixel wide, and
wider on a large view, which a browser shrinks to fit its window.

The class map comes from the regions' RLE (``class_map_of``) and is shrunk with nearest-neighbour
sampling. The original is read again from its URI, once, and checked against the content hash the
run recorded: when it cannot be read, or has changed since it was labeled, the overlay goes on a
neutral grey and the pictures say why.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

from pipeline.geometry.class_maps import class_map_of
from pipeline.labeling.decode import DecodeError, decode_image
from pipeline.storage import Storage, StorageError

SIDE = 256  # longer side of a thumbnail; smaller images keep their size
VIEW_SIDE = 2048  # longer side of the large view: a screen's worth, not the original's bytes
LINE_PER = 1024  # the view's strokes are a pixel wide per this many pixels of its longer side
ALPHA = 0.45  # weight of the class colour inside a region
FILL = round(ALPHA * 255)  # the fill's alpha in the overlay layer
NEUTRAL = (200, 200, 200)  # stands in for an original that cannot be shown
JPEG_QUALITY = 90  # the view's picture: a photo, so JPEG; the overlay stays lossless PNG
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


@dataclass(frozen=True, slots=True)
class Pictures:
    thumbnail: bytes  # PNG: the overlay painted on the image, longer side at most SIDE
    thumbnail_size: tuple[int, int]
    view: bytes  # JPEG: the image alone, longer side at most VIEW_SIDE
    overlay: bytes  # PNG with alpha: the overlay alone, at the view's size
    view_size: tuple[int, int]
    note: str | None  # why the overlay is not on the original, when it is not


def thumbnail_size(width: int, height: int, side: int = SIDE) -> tuple[int, int]:
    """(width, height) with the longer side at most ``side``: ``decode_image``'s own rounding,
    so a decoded original and its shrunk class map have the same size."""
    scale = min(1.0, side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def review_pictures(
    image: Mapping[str, Any],
    regions: Iterable[Mapping[str, Any]],
    colours: Sequence[tuple[int, int, int]],
    background: int | None,
    *,
    originals: Storage | None,
    max_pixels: int,
) -> Pictures:
    """``image`` is an ok row of the images table, ``regions`` its region rows (``class_id``,
    ``rle``); ``originals`` reads its ``uri``, or None to paint on grey without reading."""
    width, height = image["width"], image["height"]
    small, large = thumbnail_size(width, height), thumbnail_size(width, height, VIEW_SIDE)
    class_map = Image.fromarray(class_map_of(regions, height, width, background))
    base, note = _original(image, large, originals, max_pixels)
    if base is None:
        base = np.empty((large[1], large[0], 3), np.uint8)
        base[:] = NEUTRAL
    # The thumbnail's picture is the view's, shrunk: the original is decoded once.
    base_small = np.asarray(Image.fromarray(base).resize(small, Image.Resampling.BILINEAR))
    map_small = np.asarray(class_map.resize(small, Image.Resampling.NEAREST))
    map_large = np.asarray(class_map.resize(large, Image.Resampling.NEAREST))
    return Pictures(
        thumbnail=_png(paint(base_small, map_small, colours, background)),
        thumbnail_size=small,
        view=_jpeg(base),
        overlay=_png(
            overlay(map_large, colours, background, line=max(1, round(max(large) / LINE_PER)))
        ),
        view_size=large,
        note=note,
    )


def overlay(
    class_map: npt.NDArray[np.uint8],
    colours: Sequence[tuple[int, int, int]],
    background: int | None,
    *,
    line: int = 1,
) -> npt.NDArray[np.uint8]:
    """H x W x 4 RGBA: each non-background pixel its class colour at ``FILL`` alpha; opaque
    within ``line`` 4-neighbour steps of another class (the edge) and, for ``line`` steps inside
    the edge, opaque black or white (``stroke_colour``); transparent on the background."""
    labelled = np.ones(class_map.shape, bool) if background is None else class_map != background
    differs = np.zeros(class_map.shape, np.uint8)
    down, right = class_map[1:] != class_map[:-1], class_map[:, 1:] != class_map[:, :-1]
    differs[1:] |= down
    differs[:-1] |= down
    differs[:, 1:] |= right
    differs[:, :-1] |= right
    edge = _grown(differs, line - 1).astype(bool) & labelled
    # Grown into the region only: where it crosses into another, that is edge or background.
    inner = _grown(edge.view(np.uint8), line).astype(bool) & labelled & ~edge
    palette = np.asarray(colours, np.uint8)
    strokes = np.asarray([stroke_colour(colour) for colour in colours], np.uint8)
    out = np.zeros((*class_map.shape, 4), np.uint8)
    out[labelled, :3] = palette[class_map[labelled]]
    out[labelled, 3] = FILL
    out[edge, 3] = 255
    out[inner, :3] = strokes[class_map[inner]]
    out[inner, 3] = 255
    return out


def _grown(mask: npt.NDArray[np.uint8], steps: int) -> npt.NDArray[np.uint8]:
    """``mask`` with every pixel within ``steps`` 4-neighbour steps of one set."""
    if steps < 1:
        return mask
    return np.asarray(cv2.dilate(mask, _CROSS, iterations=steps), np.uint8)


def stroke_colour(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black for a light class colour, white for a dark one (by Rec. 601 luma)."""
    red, green, blue = colour
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue >= 128 else (255, 255, 255)


def paint(
    base: npt.NDArray[np.uint8],
    class_map: npt.NDArray[np.uint8],
    colours: Sequence[tuple[int, int, int]],
    background: int | None,
) -> npt.NDArray[np.uint8]:
    """``base`` (H x W x 3) with ``overlay`` laid over it, as a browser lays the view's layer."""
    layer = overlay(class_map, colours, background).astype(np.uint32)
    alpha = layer[..., 3:]
    mixed = base.astype(np.uint32) * (255 - alpha) + layer[..., :3] * alpha
    return ((mixed + 127) // 255).astype(np.uint8)


def _original(
    image: Mapping[str, Any],
    size: tuple[int, int],
    originals: Storage | None,
    max_pixels: int,
) -> tuple[npt.NDArray[np.uint8] | None, str | None]:
    if originals is None:
        return None, None
    uri = image["uri"]
    try:
        decoded = decode_image(uri, originals.read(uri), max_side=VIEW_SIDE, max_pixels=max_pixels)
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


def _jpeg(pixels: npt.NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()
