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

import codecs
import csv
import io
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from pipeline import digests
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
    """One image's mask painted and written at a time, shard by shard. Returns the folder's
    three index files; ``index.csv`` names every mask."""

    def batches() -> Iterator[Sequence[dict[str, Any]]]:
        return (part.ok_images() for part in view.parts(regions=None))

    names = MaskNames(batches)

    def painted() -> Iterator[tuple[dict[str, Any], npt.NDArray[np.uint8]]]:
        for part in view.parts(regions=("image_id", "class_id", "rle")):
            images = part.ok_images()
            regions = part.regions_of()
            for image in images:
                height, width = image["height"], image["width"]
                rows = regions.get(image["image_id"], [])
                yield image, class_map_of(rows, height, width, view.background)

    storage, root = view.layout.storage, view.layout.export(MASKS)
    return write_mask_folder(storage, root, view.class_names, view.background, names, painted())


def write_mask_folder(
    storage: Storage,
    root: str,
    class_names: Sequence[str],
    background: int | None,
    names: MaskNames,
    masks: Iterable[tuple[dict[str, Any], npt.NDArray[np.uint8]]],
) -> tuple[str, ...]:
    """The masks layout under ``root`` for ``masks`` (an image row with ``image_id`` and
    ``key``, and its class map), each named by ``names``: what the masks export and a pull
    of reviewed labels both write. What could be refused is checked before any PNG; the two
    lists are written as the masks are and land whole when the last one is written."""
    if len(class_names) > 256:
        raise ExportError(
            f"{root}: {len(class_names)} classes do not fit the 256 indices of a palette PNG"
        )
    colours = class_colours(len(class_names), background)
    labels = labelmap(class_names, colours)
    palette = bytes(value for colour in colours for value in colour)
    image_set, index = storage.join(root, *IMAGE_SET), storage.join(root, "index.csv")
    with storage.write_stream(image_set) as names_out, storage.write_stream(index) as index_out:
        rows = codecs.getwriter("utf-8")(index_out)
        table = csv.writer(rows, lineterminator="\n")
        table.writerow(["key", "image_id", "mask"])
        for image, class_map in masks:
            name = names.of(image)
            *folders, stem = name.split("/")
            uri = storage.join(root, CLASSES_FOLDER, *folders, f"{stem}.png")
            storage.write_atomic(uri, png_of(class_map, palette))
            names_out.write(f"{name}\n".encode())
            table.writerow([image["key"], image["image_id"], f"{CLASSES_FOLDER}/{name}.png"])
    labels_uri = storage.join(root, "labelmap.txt")
    storage.write_atomic(labels_uri, labels.encode())
    return (labels_uri, image_set, index)


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


class MaskNames:
    """Image -> mask name, distinct even on case-insensitive file systems, for a run of any
    size: names are compared by 64-bit digests of their case-folded form, and the few that
    share a digest are compared exactly, so memory grows by 8 bytes an image, not a name.

    ``batches`` gives the images (rows with ``image_id`` and ``key``) anew on each call, in
    batches; it is read two or three times."""

    def __init__(self, batches: Callable[[], Iterable[Sequence[Mapping[str, Any]]]]) -> None:
        maybe = digests.repeated(
            digests.sorted_digests(mask_name(i["key"]).casefold() for b in batches() for i in b)
        )
        uses = Counter(
            folded
            for batch in (batches() if maybe else ())
            for image in batch
            if digests.digest(folded := mask_name(image["key"]).casefold()) in maybe
        )
        self.shared = {name for name, count in uses.items() if count > 1}
        self._check(batches)

    def of(self, image: Mapping[str, Any]) -> str:
        name = mask_name(image["key"])
        return _with_id(name, image["image_id"]) if name.casefold() in self.shared else name

    def _check(self, batches: Callable[[], Iterable[Sequence[Mapping[str, Any]]]]) -> None:
        """No two files share a name, with ids appended, and no file has a folder's name;
        compared by digest first, then exactly where two digests meet."""
        folders: set[int] = set()

        def files() -> Iterator[str]:
            for batch in batches():
                names = [self.of(image) for image in batch]
                within = {folder for name in names for folder in _folders(name)}
                folders.update(digests.digest(folder.casefold()) for folder in within)
                yield from (f"{name}.png".casefold() for name in names)

        every = digests.sorted_digests(files())
        suspects = digests.repeated(every) | digests.among(
            np.fromiter(folders, np.int64, len(folders)), every
        )
        if not suspects:
            return
        names = [self.of(image) for batch in batches() for image in batch]
        found = [name for name in names if digests.digest(f"{name}.png".casefold()) in suspects]
        clashing = Counter(f"{name}.png".casefold() for name in found)
        every_folder = {folder.casefold() for name in names for folder in _folders(name)}
        bad = sorted(f for f, n in clashing.items() if n > 1 or f in every_folder)
        if bad:
            raise ExportError(f"mask names collide even with image ids added: {bad[:5]}")


def mask_names(images: Sequence[Mapping[str, Any]]) -> MaskNames:
    """Names for images all at hand."""
    return MaskNames(lambda: [images])


def _folders(name: str) -> Iterator[str]:
    """``a/b/c`` -> ``a``, ``a/b``."""
    parts = name.split("/")
    return ("/".join(parts[:depth]) for depth in range(1, len(parts)))


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
