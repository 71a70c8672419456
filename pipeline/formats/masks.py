"""Class-map PNGs in the Pascal VOC layout that CVAT imports as "Segmentation mask 1.1".

Under ``exports/masks/``:

- ``SegmentationClass/<name>.png``: palette PNGs whose pixel values are class ids and whose
  palette is ``class_colours``, so tools reading indices and tools reading colours agree;
- ``labelmap.txt``: ``name:r,g,b::`` per class, in class-id order (line n is palette index n);
- ``ImageSets/Segmentation/default.txt``: one mask name per line;
- ``index.csv``: ``key,image_id,mask``, which mask belongs to which image.

A mask's name is its image's key without the extension, kept as it is so that tools pair them
by name (``sub/a<1>.jpg`` -> ``SegmentationClass/sub/a<1>.png``): POSIX file systems and S3 take
any character but '/' and NUL. Only a name that cannot be written or listed is rewritten (NUL
and line breaks become '_', a '..' folder '__', a name over 255 bytes is cut), and ``index.csv``
says which mask each key got. Keys that would share a name (``a.jpg`` and ``a.png``, names
differing only in case, or a rewritten name and a kept one) all get their image id appended
(``a.<image_id>.png``), so that no name depends on which of them sorts first. Pixels come from
the regions' RLE; where regions overlap (hole filling allows it), the later one wins.
Failed images get no mask.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from pipeline.geometry.class_maps import class_colours, class_map_of
from pipeline.run.view import ExportError, ExportOptions, RunView
from pipeline.storage import Storage

MASKS = "masks"
CLASSES_FOLDER = "SegmentationClass"
IMAGE_SET = ("ImageSets", "Segmentation", "default.txt")

# What no name can hold: NUL, which no file system takes, line breaks (default.txt has a name a
# line; these are where str.splitlines splits) and lone surrogates, which are not UTF-8.
_UNWRITABLE = re.compile(r"[\x00\n\r\v\f\x1c-\x1e\x85\u2028\u2029\ud800-\udfff]")
_NAME_MAX = 255  # bytes in a file or folder name (ext4, XFS, Btrfs, ZFS, APFS)
# A mask is written through ".<stem>.png.<12 hex>.tmp" (deeplab.files.write_atomic): the stem,
# an image id included where one is appended, gets what that leaves of a name.
_STEM_MAX = _NAME_MAX - len("..png..tmp") - 12
_LABELMAP_UNSAFE = re.compile(r"[:\r\n]|^#|^\s|\s$")  # separators, comments, stripped blanks


def export_masks(view: RunView, options: ExportOptions) -> tuple[str, ...]:
    images = view.ok_images()
    regions: dict[str, list[dict[str, Any]]] = {row["image_id"]: [] for row in images}
    for row in view.regions.select(["image_id", "class_id", "rle"]).to_pylist():
        regions[row["image_id"]].append(row)

    def painted(image: dict[str, Any]) -> npt.NDArray[np.uint8]:
        return class_map_of(
            regions[image["image_id"]], image["height"], image["width"], view.background
        )

    storage, root = view.layout.storage, view.layout.export(MASKS)
    return write_mask_folder(
        storage, root, view.class_names, view.background, images, mask_names(images), painted
    )


def write_mask_folder(
    storage: Storage,
    root: str,
    class_names: Sequence[str],
    background: int | None,
    images: Sequence[dict[str, Any]],
    mask_of: dict[str, str],
    paint: Callable[[dict[str, Any]], npt.NDArray[np.uint8]],
) -> tuple[str, ...]:
    """The masks layout under ``root`` for ``images`` (rows with ``image_id`` and ``key``),
    each mask named by ``mask_of`` and painted by ``paint``: what the masks export and a pull
    of reviewed labels both write. What could be refused is checked before any PNG."""
    if len(class_names) > 256:
        raise ExportError(
            f"{root}: {len(class_names)} classes do not fit the 256 indices of a palette PNG"
        )
    colours = class_colours(len(class_names), background)
    texts = {
        ("labelmap.txt",): labelmap(class_names, colours),
        IMAGE_SET: "".join(f"{mask_of[image['image_id']]}\n" for image in images),
        ("index.csv",): index_csv(images, mask_of),
    }
    palette = bytes(value for colour in colours for value in colour)
    written = []
    for image in images:
        class_map = paint(image)
        *folders, stem = mask_of[image["image_id"]].split("/")
        uri = storage.join(root, CLASSES_FOLDER, *folders, f"{stem}.png")
        storage.write_atomic(uri, png_of(class_map, palette))
        written.append(uri)
    for parts, text in texts.items():
        uri = storage.join(root, *parts)
        storage.write_atomic(uri, text.encode())
        written.append(uri)
    return tuple(written)


def mask_name(key: str) -> str:
    """``key`` without its extension, as a relative '/'-separated path that stays in its folder.

    Kept as it is where a file system can hold it. Empty and '.' folders go (the same path);
    '..' and a name that is empty, '.' or '..' become underscores, so do NUL and line breaks;
    a name too long for the file system is cut. A backslash is a character like any other.
    """
    *folders, last = key.split("/")
    stem, dot, _ = last.rpartition(".")
    segments = [s for s in folders if s not in ("", ".")] + [stem if dot and stem else last]
    safe = [_UNWRITABLE.sub("_", s) for s in segments]
    *kept, name = ("_" * max(len(s), 1) if s in ("", ".", "..") else s for s in safe)
    return "/".join([*(_cut(s, _NAME_MAX) for s in kept), _cut(name, _STEM_MAX)])


def mask_names(images: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Image id -> mask name, distinct even on case-insensitive file systems."""
    names = {row["image_id"]: mask_name(row["key"]) for row in images}
    uses = Counter(name.casefold() for name in names.values())
    unique = {
        image_id: name if uses[name.casefold()] == 1 else _with_id(name, image_id)
        for image_id, name in names.items()
    }
    files = {f"{name}.png".casefold() for name in unique.values()}
    folders = {
        "/".join(name.split("/")[:depth]).casefold()
        for name in unique.values()
        for depth in range(1, name.count("/") + 1)
    }
    if len(files) != len(unique) or files & folders:
        raise ExportError(f"mask names collide even with image ids added: {sorted(files)[:5]}")
    return unique


def _with_id(name: str, image_id: str) -> str:
    """``name.<image_id>``, the name cut where the two would not fit a file name."""
    folder, slash, stem = name.rpartition("/")
    return f"{folder}{slash}{_cut(stem, _STEM_MAX - len(image_id) - 1)}.{image_id}"


def _cut(segment: str, limit: int) -> str:
    """At most ``limit`` bytes of UTF-8, cut between characters."""
    return segment.encode()[:limit].decode(errors="ignore")


def png_of(class_map: npt.NDArray[np.uint8], palette: bytes) -> bytes:
    """A palette PNG: indices are the class ids, the palette gives each its colour."""
    image = Image.fromarray(class_map)
    image.putpalette(palette)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def labelmap(names: Sequence[str], colours: Sequence[tuple[int, int, int]]) -> str:
    """CVAT's ``labelmap.txt``. Its fields are ':'-separated with no escape, and readers strip
    lines and skip '#' lines, so a class name that would be misread is refused, not altered."""
    bad = [name for name in names if _LABELMAP_UNSAFE.search(name)]
    if bad:
        raise ExportError(
            f"class name {bad[0]!r} cannot be written to labelmap.txt (no ':', line breaks, "
            "leading '#' or surrounding blanks)"
        )
    lines = [f"{name}:{r},{g},{b}::" for name, (r, g, b) in zip(names, colours, strict=True)]
    return "\n".join(["# label:color_rgb:parts:actions", *lines]) + "\n"


def index_csv(images: Sequence[dict[str, Any]], mask_of: dict[str, str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["key", "image_id", "mask"])
    for image in images:
        mask = f"{CLASSES_FOLDER}/{mask_of[image['image_id']]}.png"
        writer.writerow([image["key"], image["image_id"], mask])
    return out.getvalue()
