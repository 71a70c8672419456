"""Reviewed labels ("truth") as class maps in a model's class ids: a masks folder or COCO JSON.

A masks folder is the masks export's layout, which is also what reviewers get back from CVAT:
``SegmentationClass/<name>.png`` with ``index.csv`` (``key,...,mask``) saying which mask belongs
to which image key, or, without it, masks paired with keys by name (``sub/a.jpg`` ->
``SegmentationClass/sub/a.png``; a folder with no ``SegmentationClass`` holds the PNGs itself).
Palette and grey PNGs hold class indices; RGB PNGs hold ``labelmap.txt`` colours. With a
``labelmap.txt`` its line order names the indices, else indices are the model's class ids. A COCO
instances file pairs ``file_name`` with the key, and its categories are matched by name.

Truth pixels of 255 are "not labeled" and are left out of every figure. Every file of the truth
(PNGs, ``labelmap.txt``, ``index.csv``, or the JSON) is hashed as it is read, so ``sha256`` can
say exactly which labels a figure was computed against; masks are read as images are scored.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image
from pycocotools import mask as mask_utils

from deeplab.metrics import IGNORE_INDEX  # truth pixels nobody labeled
from pipeline.digests import digest, holds, sorted_digests
from pipeline.errors import PrelabelError
from pipeline.formats.masks import CLASSES_FOLDER, mask_name
from pipeline.quality.truth_listing import TruthListing
from pipeline.storage import Storage, StorageError, storage_for

ClassMap = npt.NDArray[np.uint8]


class TruthError(PrelabelError):
    """Truth that cannot be read or does not fit the model's classes; one line why."""


class Label(Protocol):
    """One image's truth as read: picklable, so that another process can decode it."""

    @property
    def key(self) -> str: ...

    def decode(
        self, class_names: Sequence[str], background: int
    ) -> ClassMap: ...  # in class_names' ids, IGNORE_INDEX kept


class Truth(Protocol):
    source: str
    names: tuple[str, ...] | None  # what the truth's classes are called; None: bare class ids

    @property
    def sha256(self) -> str: ...  # of every label the truth holds

    def has(self, key: str) -> bool: ...
    def fetch(self, key: str) -> Label: ...  # read and hashed here, decoded anywhere
    def read(
        self, key: str, class_names: Sequence[str], background: int
    ) -> ClassMap: ...  # in class_names' ids, IGNORE_INDEX kept
    def unmatched(self, keys: Iterable[str]) -> Iterable[str]: ...  # labels none of keys use


def open_truth(source: str) -> Truth:
    """A masks folder, or a COCO JSON file (by its ``.json`` name)."""
    storage = storage_for(source)
    if source.lower().endswith(".json"):
        return CocoTruth(source, storage)
    return MaskTruth(source, storage)


def check_names(truth: Truth, class_names: Sequence[str]) -> None:
    """Every truth class must be one of the model's, by name."""
    unknown = [name for name in truth.names or () if name not in class_names]
    if unknown:
        raise TruthError(
            f"{truth.source}: truth class {unknown[0]!r} is not one of the model's classes "
            f"({', '.join(class_names)})"
        )


_SIDE_FILES = ("labelmap.txt", "index.csv")


class MaskTruth:
    """A masks folder, read a mask at a time as images are scored: a million masks would not
    fit in memory. Each file is hashed as it is read; ``sha256`` reads those no image used.

    The listing is a million names for a million masks, so it is kept on disk
    (``TruthListing``): which file each label names, each file's sha256 once read, and a URI
    only where the folder's prefix and the name do not give it back (a local name that is not
    UTF-8, listed by its printable form; an S3 key with an empty segment)."""

    def __init__(self, source: str, storage: Storage) -> None:
        self.source = source
        self.storage = storage
        self.prefix = storage.join(source, "_")[:-1]  # the folder, as its files' URIs begin
        self.listing = TruthListing()
        masks = nested = 0
        folder = f"{CLASSES_FOLDER}/"

        def listed() -> Iterator[tuple[str, str | None]]:
            nonlocal masks, nested
            for info in storage.list(source):
                name = info.key
                if name.lower().endswith(".png"):
                    masks += 1
                    nested += name.startswith(folder)
                elif name not in _SIDE_FILES:
                    continue
                yield name, None if info.uri == self.prefix + name else info.uri

        try:
            self.listing.add_files(listed())
        except StorageError as exc:
            raise TruthError(f"{source}: cannot read the truth masks ({exc})") from exc
        self.colours: dict[tuple[int, int, int], int] = {}
        self.names: tuple[str, ...] | None = None
        if self.listing.has("labelmap.txt"):
            self.names, self.colours = _labelmap(self._read("labelmap.txt"), source)
        if not masks:
            raise TruthError(f"{source}: no PNG masks found")
        # Labels are image keys where index.csv pairs them, else the masks' own stems.
        self.by_stem = not self.listing.has("index.csv")
        if self.by_stem:
            self.listing.add_labels(
                (name.removeprefix(folder)[: -len(".png")], name)
                for name in self.listing.names()
                if name.lower().endswith(".png") and (not nested or name.startswith(folder))
            )
        else:
            self.listing.add_labels(_index(self._read("index.csv"), source))

    @property
    def sha256(self) -> str:
        """Of every file's name and bytes, in name order: which labels the figures are of."""
        for name in self.listing.unhashed():
            self._read(name)
        whole = hashlib.sha256()
        for name, sha in self.listing.hashes():
            whole.update(f"{name}\t{(sha or b'').hex()}\n".encode())
        return whole.hexdigest()

    def _read(self, name: str) -> bytes:
        uri = self.listing.uri(name, self.prefix)
        if uri is None:
            raise TruthError(f"{self.source}: {name} is not among its files")
        return self._load(name, uri)

    def _load(self, name: str, uri: str) -> bytes:
        """A listed file's bytes, hashed as they are read."""
        try:
            data = self.storage.read(uri)
        except StorageError as exc:
            raise TruthError(f"{self.source}: cannot read the truth masks ({exc})") from exc
        self.listing.set_sha256(name, hashlib.sha256(data).digest())
        return data

    def _mask_of(self, key: str) -> str | None:
        return self.listing.mask_of(mask_name(key) if self.by_stem else key)

    def has(self, key: str) -> bool:
        return self._mask_of(key) is not None

    def unmatched(self, keys: Iterable[str]) -> Iterator[str]:
        if self.by_stem:
            return self.listing.unused((mask_name(key) for key in keys), by_name=True)
        return self.listing.unused(keys, by_name=False)

    def read(self, key: str, class_names: Sequence[str], background: int) -> ClassMap:
        return self.fetch(key).decode(class_names, background)

    def fetch(self, key: str) -> MaskLabel:
        name = self._mask_of(key)
        if name is None:
            raise TruthError(f"{key}: no truth mask")
        uri = self.listing.uri(name, self.prefix) if name.lower().endswith(".png") else None
        if uri is None:
            raise TruthError(f"{key}: mask {name} named in index.csv is not in {self.source}")
        return MaskLabel(key, name, self._load(name, uri), self.source, self.names, self.colours)


@dataclass(frozen=True)
class MaskLabel:
    """One mask's bytes, as read and hashed, and what decoding them needs: small enough to
    hand to another process, which does the decoding."""

    key: str
    name: str
    data: bytes
    source: str
    names: tuple[str, ...] | None
    colours: dict[tuple[int, int, int], int]

    def decode(self, class_names: Sequence[str], background: int) -> ClassMap:
        try:
            with Image.open(io.BytesIO(self.data)) as image:
                image.load()
                values = self._indices(image)
        except TruthError:
            raise
        except Exception as exc:  # a broken PNG can make Pillow raise anything
            raise TruthError(f"{self.key}: mask {self.name} is not a readable PNG ({exc})") from exc
        return _remap(values, self.names, class_names, f"{self.key}: mask {self.name}")

    def _indices(self, image: Image.Image) -> ClassMap:
        name = self.name
        if image.mode in ("P", "L"):
            return np.asarray(image, dtype=np.uint8)
        if image.mode == "1":
            return np.asarray(image.convert("L"), dtype=np.uint8) // 255
        if image.mode not in ("RGB", "RGBA"):
            raise TruthError(f"mask {name}: {image.mode} masks are not class maps")
        if not self.colours:
            raise TruthError(f"mask {name} is RGB, but {self.source} has no labelmap.txt colours")
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint32)
        packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        colours, inverse = np.unique(packed, return_inverse=True)
        lut = np.empty(len(colours), np.uint8)
        for i, value in enumerate(colours.tolist()):
            colour = (value >> 16, (value >> 8) & 255, value & 255)
            if colour not in self.colours:
                raise TruthError(f"mask {name}: colour {colour} is not in labelmap.txt")
            lut[i] = self.colours[colour]
        indices: ClassMap = lut[inverse.reshape(packed.shape)]
        return indices


def _unused(labels: Sequence[str], used: Iterable[str]) -> list[str]:
    """The ``labels`` that none of ``used`` is, in name order. The used names, a million for
    a run of a million images, are held as 8-byte digests (``pipeline.digests``): a label whose
    digest meets a used one's would be taken as used, at odds under 10^-7 for a million."""
    seen = sorted_digests(used)
    found = holds(seen, np.fromiter((digest(label) for label in labels), np.int64, len(labels)))
    return sorted(label for label, hit in zip(labels, found.tolist(), strict=True) if not hit)


def _labelmap(data: bytes, source: str) -> tuple[tuple[str, ...], dict[tuple[int, int, int], int]]:
    """CVAT's ``name:r,g,b:parts:actions`` lines, in class-index order; '#' lines are comments."""
    names: list[str] = []
    colours: dict[tuple[int, int, int], int] = {}
    for line in data.decode("utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(":")
        rgb = rest.partition(":")[0].split(",")
        if len(rgb) == 3 and all(v.strip().isdigit() for v in rgb):
            colour = (int(rgb[0]), int(rgb[1]), int(rgb[2]))
            colours.setdefault(colour, len(names))
        names.append(name)
    if len(names) > IGNORE_INDEX:
        raise TruthError(f"{source}: labelmap.txt names {len(names)} classes, more than 255")
    return tuple(names), colours


def _index(data: bytes, source: str) -> Iterator[tuple[str, str]]:
    """``index.csv``'s (key, mask path) rows, refusing paths that leave the folder."""
    rows = csv.DictReader(io.StringIO(data.decode("utf-8", errors="replace")))
    if not rows.fieldnames or not {"key", "mask"} <= set(rows.fieldnames):
        raise TruthError(f"{source}: index.csv needs 'key' and 'mask' columns")
    for line, row in enumerate(rows, start=2):
        if not row["key"] or not row["mask"]:
            raise TruthError(f"{source}: index.csv line {line} lacks a key or a mask")
        mask = row["mask"].replace("\\", "/")
        parts = mask.split("/")
        if mask.startswith("/") or ":" in parts[0] or any(p in ("", ".", "..") for p in parts):
            raise TruthError(f"{source}: index.csv mask path {mask!r} leaves the folder")
        yield row["key"], mask


def _remap(
    values: ClassMap, names: tuple[str, ...] | None, class_names: Sequence[str], what: str
) -> ClassMap:
    """Truth indices -> class ids by name (or as they are, with no names); 255 stays 255."""
    lut = np.full(256, -1, np.int16)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    if names is None:
        lut[: len(class_names)] = np.arange(len(class_names))
    else:
        for index, name in enumerate(names):
            if name in class_names:
                lut[index] = class_names.index(name)
    values = np.ascontiguousarray(values)
    present = np.flatnonzero(cv2.calcHist([values], [0], None, [256], [0, 256]).ravel())
    if (lut[present] < 0).any():
        mapped = lut[values]  # the first unknown index in raster order, for the message
        bad = int(values[mapped < 0][0])
        named = f" ({names[bad]!r})" if names and bad < len(names) else ""
        raise TruthError(
            f"{what}: class index {bad}{named} is not one of the model's {len(class_names)} classes"
        )
    # OpenCV's table lookup: several times faster than indexing a table with the map.
    return np.asarray(cv2.LUT(values, lut.astype(np.uint8)), np.uint8)


class CocoTruth:
    def __init__(self, source: str, storage: Storage) -> None:
        self.source = source
        try:
            data = storage.read(source)
        except StorageError as exc:
            raise TruthError(f"{source}: cannot read the COCO file ({exc})") from exc
        self.sha256 = hashlib.sha256(data).hexdigest()
        try:
            coco = json.loads(data)
            categories = {int(c["id"]): str(c["name"]) for c in coco["categories"]}
            self.images = {str(i["file_name"]): i for i in coco["images"]}
            ids = {i["id"]: name for name, i in self.images.items()}
            self.annotations: dict[str, list[dict[str, Any]]] = {n: [] for n in self.images}
            for a in coco["annotations"]:
                self.annotations[ids[a["image_id"]]].append(a)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TruthError(f"{source}: not a COCO instances file ({exc!r})") from exc
        if len(self.images) != len(coco["images"]):
            raise TruthError(f"{source}: two images share a file_name")
        self.categories = categories
        self.names: tuple[str, ...] | None = tuple(dict.fromkeys(categories.values()))

    def has(self, key: str) -> bool:
        return key in self.images

    def unmatched(self, keys: Iterable[str]) -> list[str]:
        return _unused(list(self.images), keys)

    def read(self, key: str, class_names: Sequence[str], background: int) -> ClassMap:
        return self.fetch(key).decode(class_names, background)

    def fetch(self, key: str) -> CocoLabel:
        image = self.images[key]
        return CocoLabel(
            key, int(image["height"]), int(image["width"]), self.annotations[key], self.categories
        )


@dataclass(frozen=True)
class CocoLabel:
    """One image's annotations and the categories that name them."""

    key: str
    height: int
    width: int
    annotations: list[dict[str, Any]]
    categories: dict[int, str]

    def decode(self, class_names: Sequence[str], background: int) -> ClassMap:
        """Annotations painted in file order over the background; a later one wins."""
        out = np.full((self.height, self.width), background, np.uint8)
        for a in self.annotations:
            name = self.categories.get(a.get("category_id", -1))
            if name is None or name not in class_names:
                raise TruthError(f"{self.key}: annotation {a.get('id')} has an unknown category")
            try:
                mask = _decode_segmentation(a["segmentation"], self.height, self.width)
            except (ValueError, KeyError, TypeError) as exc:
                raise TruthError(f"{self.key}: annotation {a.get('id')}: bad segmentation") from exc
            out[mask] = class_names.index(name)
        return out


def _decode_segmentation(segmentation: Any, height: int, width: int) -> npt.NDArray[np.bool_]:
    if isinstance(segmentation, list):  # polygons
        if not segmentation:
            return np.zeros((height, width), bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        if list(segmentation["size"]) != [height, width]:
            raise ValueError(f"RLE size {segmentation['size']} is not the image's")
        rle = {"size": [height, width], "counts": segmentation["counts"]}
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode()
    return np.asarray(mask_utils.decode(rle), dtype=bool)
