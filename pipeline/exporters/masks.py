"""Class-map PNGs in the Pascal VOC layout that CVAT imports as "Segmentation mask 1.1".

Under ``exports/masks/``:

- ``SegmentationClass/<name>.png``: palette PNGs whose pixel values are class ids and whose
  palette is ``class_colours``, so tools reading indices and tools reading colours agree;
- ``labelmap.txt``: ``name:r,g,b::`` per class, in class-id order (line n is palette index n);
- ``ImageSets/Segmentation/default.txt``: one mask name per line;
- ``index.csv``: ``key,image_id,mask``, which mask belongs to which image.

A mask's name is its image's key without the extension, so tools pair them by name
(``sub/a.jpg`` -> ``SegmentationClass/sub/a.png``). Keys that would share a name (``a.jpg`` and
``a.png``, names differing only in case, or in characters replaced for safety) all get their image
id appended (``a.<image_id>.png``), so that no name depends on which of them sorts first. Pixels
come from the regions' RLE; where regions overlap (hole filling allows it), the later one wins.
Failed images get no mask.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from pipeline.exporters.class_maps import class_colours, class_map_of
from pipeline.exporters.view import ExportError, ExportOptions, RunView

MASKS = "masks"
CLASSES_FOLDER = "SegmentationClass"
IMAGE_SET = ("ImageSets", "Segmentation", "default.txt")

_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"|?*]')  # control characters and what Windows refuses
_LABELMAP_UNSAFE = re.compile(r"[:\r\n]|^#|^\s|\s$")  # separators, comments, stripped blanks


def export_masks(view: RunView, options: ExportOptions) -> tuple[str, ...]:
    names = view.class_names
    if len(names) > 256:
        raise ExportError(
            f"{view.layout.root}: {len(names)} classes do not fit the 256 indices of a palette PNG"
        )
    colours = class_colours(len(names), view.background)
    images = view.ok_images()
    mask_of = mask_names(images)
    texts = {  # made first, so a class name labelmap.txt cannot hold fails before any PNG
        ("labelmap.txt",): labelmap(names, colours),
        IMAGE_SET: "".join(f"{mask_of[image['image_id']]}\n" for image in images),
        ("index.csv",): index_csv(images, mask_of),
    }
    regions: dict[str, list[dict[str, Any]]] = {row["image_id"]: [] for row in images}
    for row in view.regions.select(["image_id", "class_id", "rle"]).to_pylist():
        regions[row["image_id"]].append(row)
    palette = bytes(value for colour in colours for value in colour)
    storage, root = view.layout.storage, view.layout.export(MASKS)
    written = []
    for image in images:
        class_map = class_map_of(
            regions[image["image_id"]], image["height"], image["width"], view.background
        )
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
    """``key`` without its extension, made a relative '/'-separated path that stays in its folder.

    Split at both kinds of slash; empty and '.' folders go, other all-dot segments ('..') and an
    empty name become underscores, as do control characters and what Windows refuses in names.
    """
    *folders, last = re.split(r"[/\\]", key)
    stem, dot, _ = last.rpartition(".")
    segments = [s for s in folders if s not in ("", ".")] + [stem if dot and stem else last]
    safe = [_UNSAFE.sub("_", s) for s in segments]
    return "/".join(s if s.strip(".") else "_" * max(len(s), 1) for s in safe)


def mask_names(images: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Image id -> mask name, distinct even on case-insensitive file systems."""
    names = {row["image_id"]: mask_name(row["key"]) for row in images}
    uses = Counter(name.casefold() for name in names.values())
    unique = {
        image_id: name if uses[name.casefold()] == 1 else f"{name}.{image_id}"
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
