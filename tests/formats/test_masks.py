"""Masks export against the class maps a run was made from: PNG indices give them back exactly,
and so do the PNG's colours read through labelmap.txt. The RLE decoder that paints them is
checked against pycocotools."""

from __future__ import annotations

import csv
import os
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from pycocotools import mask as mask_utils

from pipeline.formats import ExportError, ExportOptions, RunView
from pipeline.formats.masks import export_masks, mask_name
from pipeline.geometry.class_maps import class_map_of, voc_colour
from pipeline.geometry.policy import RegionPolicy
from pipeline.geometry.rle import region_crop, runs_of_counts, runs_of_many
from tests.runs import CLASS_NAMES, write_run

KEEP_ALL = RegionPolicy(min_area=1, background=0)


def coco_counts(mask: np.ndarray) -> str:
    """The reference encoder: pycocotools on the whole mask, column-major as it requires."""
    rle: dict[str, Any] = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return str(rle["counts"].decode("ascii"))


def scenes(seed: int) -> dict[str, np.ndarray]:
    """Odd sizes, shapes with holes, shapes on every edge, a full-height band, an empty image."""
    rng = np.random.default_rng(seed)
    maps = {}
    for n, (h, w) in enumerate([(41, 63), (64, 37), (1, 9)]):
        class_map = np.zeros((h, w), np.uint8)
        for _ in range(8):
            y, x = rng.integers(0, h), rng.integers(0, w)
            dy, dx = rng.integers(1, 20, 2)
            class_map[y : y + dy, x : x + dx] = rng.integers(1, len(CLASS_NAMES))
        class_map[h // 2 : h // 2 + 3, w // 2 : w // 2 + 3] = 0
        maps[f"sub/scene {n}.jpg"] = class_map
    band = np.zeros((30, 20), np.uint8)
    band[:, 5:9] = 2  # full height: its COCO runs cross from column to column
    band[:, 15:] = 4
    band[10:12, 17] = 0
    maps["band.png"] = band
    maps["empty.png"] = np.zeros((5, 7), np.uint8)
    return maps


def read_index(root: Path) -> dict[str, dict[str, str]]:
    with (root / "index.csv").open(newline="") as f:
        return {row["key"]: row for row in csv.DictReader(f)}


def read_labelmap(root: Path) -> list[tuple[str, tuple[int, ...]]]:
    """As datumaro's VOC reader does: strip, skip '#' lines, split at ':'."""
    entries = []
    for line in (root / "labelmap.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, colour, parts, actions = line.split(":")
            assert parts == actions == ""
            entries.append((name, tuple(int(v) for v in colour.split(","))))
    return entries


def exported(view: RunView) -> Path:
    uris = export_masks(view, ExportOptions())
    root = view.layout.export("masks")
    assert all(Path(uri).is_relative_to(root) and Path(uri).is_file() for uri in uris)
    return Path(root)


@pytest.mark.parametrize("seed", range(3))
def test_png_indices_and_colours_give_back_the_class_maps(tmp_path: Path, seed: int) -> None:
    maps = scenes(seed)
    root = exported(write_run(tmp_path / "run", maps, policy=KEEP_ALL))
    index = read_index(root)
    colour_to_class = {colour: i for i, (_, colour) in enumerate(read_labelmap(root))}
    for key, class_map in maps.items():
        with Image.open(root / index[key]["mask"]) as image:
            assert image.mode == "P"
            np.testing.assert_array_equal(np.asarray(image), class_map)
            rgb = np.asarray(image.convert("RGB"))
        by_colour = np.vectorize(lambda *c: colour_to_class[c], otypes=[np.uint8])(
            rgb[..., 0], rgb[..., 1], rgb[..., 2]
        )
        np.testing.assert_array_equal(by_colour, class_map)


def test_layout_labelmap_image_set_and_index(tmp_path: Path) -> None:
    maps = {"b/x.jpg": np.ones((4, 6), np.uint8), "a.png": np.full((3, 3), 3, np.uint8)}
    view = write_run(tmp_path / "run", maps, failed={"bad.jpg": "bad.jpg: not an image"})
    root = exported(view)
    lines = (root / "labelmap.txt").read_text().splitlines()
    assert lines[0] == "# label:color_rgb:parts:actions"
    entries = read_labelmap(root)
    assert [name for name, _ in entries] == list(CLASS_NAMES)  # class-id order, background first
    assert entries[0][1] == (0, 0, 0)
    assert len({colour for _, colour in entries}) == len(entries)
    names = (root / "ImageSets/Segmentation/default.txt").read_text().splitlines()
    assert names == ["a", "b/x"]  # key order
    index = read_index(root)
    assert set(index) == {"a.png", "b/x.jpg"}  # the failed image has no mask
    ids = {row["key"]: row["image_id"] for row in view.images.to_pylist()}
    for key, row in index.items():
        assert row["image_id"] == ids[key]
        assert row["mask"] == f"SegmentationClass/{Path(key).with_suffix('.png')}"
    masks = {p.relative_to(root).as_posix() for p in root.rglob("*.png")}
    assert masks == {f"SegmentationClass/{name}.png" for name in names}


def test_images_sharing_a_name_get_distinct_masks(tmp_path: Path) -> None:
    maps = {
        "a.jpg": np.ones((4, 4), np.uint8),
        "a.png": np.full((4, 4), 2, np.uint8),
        "A.tif": np.full((4, 4), 3, np.uint8),  # the same file on a case-insensitive disk
        "a\nb.png": np.full((2, 2), 4, np.uint8),  # a line break is rewritten ...
        "a_b.png": np.full((2, 3), 1, np.uint8),  # ... into this one's name
        "c.jpg": np.full((5, 5), 1, np.uint8),
    }
    view = write_run(tmp_path / "run", maps)
    root = exported(view)
    index = read_index(root)
    assert len({row["mask"].casefold() for row in index.values()}) == len(maps)
    assert index["c.jpg"]["mask"] == "SegmentationClass/c.png"  # alone with its name: unchanged
    assert index["a.jpg"]["mask"] == f"SegmentationClass/a.{index['a.jpg']['image_id']}.png"
    assert index["a_b.png"]["mask"] == f"SegmentationClass/a_b.{index['a_b.png']['image_id']}.png"
    for key, class_map in maps.items():
        with Image.open(root / index[key]["mask"]) as image:
            np.testing.assert_array_equal(np.asarray(image), class_map)


def test_names_stay_apart_when_their_digests_meet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Names are compared by 64-bit digests first; where digests meet, exactly. Digests of
    two values make every name meet another, and nothing changes."""
    maps = {f"{k}.jpg": np.full((2, 2), k % 3, np.uint8) for k in range(6)}
    maps["d/e.jpg"] = maps["x.jpg"] = maps["X.jpg"] = np.ones((2, 2), np.uint8)
    view = write_run(tmp_path / "run", maps)
    plain = read_index(exported(view))
    monkeypatch.setattr("pipeline.digests.digest", lambda name: len(name) % 2)
    assert read_index(exported(view)) == plain
    assert plain["3.jpg"]["mask"] == "SegmentationClass/3.png"
    assert plain["X.jpg"]["mask"] == f"SegmentationClass/X.{plain['X.jpg']['image_id']}.png"


def test_a_mask_named_like_a_folder_is_refused(tmp_path: Path) -> None:
    maps = {"a.jpg": np.ones((2, 2), np.uint8), "a.png/b.jpg": np.ones((2, 2), np.uint8)}
    with pytest.raises(ExportError, match=r"collide.*a\.png"):
        exported(write_run(tmp_path / "run", maps))


# Names a Linux file system and S3 hold, which Windows would refuse or read as folders.
KEPT_KEYS = [
    "a<1>.jpg",
    'q:"x"|y?*.png',
    "sub dir/b\\c.jpg",
    "tab\there.png",
    "ünï/çödé 名前.jpg",
    ".../dots.png",
    "lead/ trailing .jpg",
]


def test_names_are_kept_so_tools_pair_masks_with_images_by_name(tmp_path: Path) -> None:
    """As FiftyOne's and Datumaro's importers pair them on Linux: a mask belongs to the image
    whose path, extension aside, is the mask's path under SegmentationClass."""
    maps = {key: np.full((3, 4), n % 4 + 1, np.uint8) for n, key in enumerate(KEPT_KEYS)}
    root = exported(write_run(tmp_path / "run", maps))
    classes = root / "SegmentationClass"
    masks = {p.relative_to(classes).with_suffix("").as_posix(): p for p in classes.rglob("*.png")}
    stems = {PurePosixPath(key).with_suffix("").as_posix(): key for key in maps}
    assert masks.keys() == stems.keys()
    for stem, key in stems.items():
        with Image.open(masks[stem]) as image:
            np.testing.assert_array_equal(np.asarray(image), maps[key])
    index = read_index(root)
    assert {key: row["mask"] for key, row in index.items()} == {
        key: f"SegmentationClass/{stem}.png" for stem, key in stems.items()
    }
    names = (root / "ImageSets/Segmentation/default.txt").read_text().split("\n")
    assert names == [PurePosixPath(key).with_suffix("").as_posix() for key in sorted(maps)] + [""]


def test_names_too_long_for_the_file_system_are_cut_and_recorded(tmp_path: Path) -> None:
    """Keys from S3, whose names may be longer than a file system holds, and local ones at
    the limit: each mask is written, read back through index.csv, and no longer than a name
    may be on the disk written (its temporary file included)."""
    maps = {
        "k" * 233 + ".jpg": np.full((2, 2), 1, np.uint8),  # the longest name kept as it is
        "l" * 234 + ".jpg": np.full((2, 3), 2, np.uint8),
        "é" * 120 + ".png": np.full((3, 2), 3, np.uint8),  # 240 bytes, cut between characters
        "m" * 240 + "1.jpg": np.full((3, 3), 4, np.uint8),  # these two share what is kept ...
        "m" * 240 + "2.jpg": np.full((4, 2), 1, np.uint8),  # ... and get their image ids
        "f" * 300 + "/a.jpg": np.full((2, 4), 2, np.uint8),  # a folder S3 holds and disks do not
    }
    root = exported(write_run(tmp_path / "run", maps))
    name_max = os.pathconf(root, "PC_NAME_MAX")
    index = read_index(root)
    assert index["k" * 233 + ".jpg"]["mask"] == "SegmentationClass/" + "k" * 233 + ".png"
    assert len({row["mask"] for row in index.values()}) == len(maps)
    for key, class_map in maps.items():
        mask = root / index[key]["mask"]
        parts = mask.relative_to(root).parts
        # write_atomic's temporary file: ".<name>.<12 hex>.tmp" beside it
        assert all(len(part.encode()) <= name_max for part in parts[:-1])
        assert len(parts[-1].encode()) + 18 <= name_max
        assert key[:100] == mask.relative_to(root / "SegmentationClass").as_posix()[:100]
        with Image.open(mask) as image:
            np.testing.assert_array_equal(np.asarray(image), class_map)
    for key in ("m" * 240 + "1.jpg", "m" * 240 + "2.jpg"):
        assert index[key]["mask"].endswith(f".{index[key]['image_id']}.png")
    assert "é" * 116 + ".png" in index["é" * 120 + ".png"]["mask"]


HOSTILE_KEYS = [
    "../escape.jpg",
    "../../twice.jpg",
    "/etc/absolute.jpg",
    "..\\..\\backslash.jpg",
    "C:\\drive.jpg",
    "sub/../../../up.jpg",
    "nul\x00byte.jpg",
    "line\nbreak.jpg",
    "..",
    "./.",
    "..jpg",
]


def test_hostile_keys_stay_inside_the_masks_folder(tmp_path: Path) -> None:
    maps = {key: np.full((3, 4), n % 4 + 1, np.uint8) for n, key in enumerate(HOSTILE_KEYS)}
    run = tmp_path / "deep" / "run"
    root = exported(write_run(run, maps))
    before_export = {run / "run.json", *run.glob("records/*"), *run.glob("images/*")}
    written = {Path(folder) / name for folder, _, files in os.walk(tmp_path) for name in files}
    assert written - before_export == {p for p in written if p.is_relative_to(root)}
    index = read_index(root)
    for key, class_map in maps.items():
        mask = (root / index[key]["mask"]).resolve()
        assert mask.is_relative_to(root.resolve() / "SegmentationClass")
        with Image.open(mask) as image:
            np.testing.assert_array_equal(np.asarray(image), class_map)
    names = (root / "ImageSets/Segmentation/default.txt").read_text().split("\n")
    assert names[-1] == "" and len(names) == len(maps) + 1  # no name holds a line break


def test_overlapping_regions_later_wins(tmp_path: Path) -> None:
    class_map = np.zeros((12, 12), np.uint8)
    class_map[1:11, 1:11] = 4
    class_map[4:7, 4:7] = 1  # class 1 inside class 4's hole, which hole filling fills
    policy = RegionPolicy(min_area=1, fill_holes_below=50)
    view = write_run(tmp_path / "run", {"a.png": class_map}, policy=policy)
    assert [r["class_id"] for r in view.regions.to_pylist()] == [1, 4]  # 4 is painted last
    expected = np.where(class_map > 0, 4, 0)
    with Image.open(exported(view) / "SegmentationClass/a.png") as image:
        np.testing.assert_array_equal(np.asarray(image), expected)


def test_background_other_than_0_is_black_and_fills_uncovered_pixels(tmp_path: Path) -> None:
    class_map = np.full((6, 8), 2, np.uint8)
    class_map[1:3, 1:5] = 0
    class_map[4:, 5:] = 3
    view = write_run(
        tmp_path / "run", {"a.png": class_map}, policy=RegionPolicy(min_area=1, background=2)
    )
    root = exported(view)
    with Image.open(root / "SegmentationClass/a.png") as image:
        np.testing.assert_array_equal(np.asarray(image), class_map)
    colours = [colour for _, colour in read_labelmap(root)]
    assert colours[2] == (0, 0, 0)
    assert len(set(colours)) == len(colours)


def test_refuses_more_classes_than_a_palette_holds(tmp_path: Path) -> None:
    names = tuple(f"class {i}" for i in range(257))
    view = write_run(tmp_path / "run", {"a.png": np.ones((2, 2), np.uint8)}, class_names=names)
    with pytest.raises(ExportError, match="257 classes"):
        export_masks(view, ExportOptions())


@pytest.mark.parametrize("name", ["a:b", "#hash", " padded", "line\nbreak"])
def test_refuses_class_names_labelmap_would_misread(tmp_path: Path, name: str) -> None:
    names = ("background", name, "other")
    view = write_run(tmp_path / "run", {"a.png": np.ones((2, 2), np.uint8)}, class_names=names)
    with pytest.raises(ExportError, match="labelmap"):
        export_masks(view, ExportOptions())
    assert not Path(view.layout.export("masks")).exists()  # refused before any PNG


# The published Pascal VOC 2012 palette (devkit VOClabelcolormap): background, aeroplane,
# bicycle, bird, boat, ..., person (15), ..., tvmonitor (20).
VOC_PALETTE = {
    0: (0, 0, 0),
    1: (128, 0, 0),
    2: (0, 128, 0),
    3: (128, 128, 0),
    4: (0, 0, 128),
    8: (64, 0, 0),
    15: (192, 128, 128),
    20: (0, 64, 128),
}


def test_voc_colours_are_the_published_ones_and_distinct() -> None:
    assert {i: voc_colour(i) for i in VOC_PALETTE} == VOC_PALETTE
    assert len({voc_colour(i) for i in range(256)}) == 256


@pytest.mark.parametrize(
    ("mask", "why"),
    [
        (np.ones((7, 5), bool), "whole image: a run that crosses every column"),
        (np.pad(np.ones((1, 1), bool), ((0, 6), (0, 4))), "first pixel: empty leading zeros"),
        (np.pad(np.ones((1, 1), bool), ((6, 0), (4, 0))), "last pixel: no trailing zeros"),
        (np.pad(np.ones((7, 1), bool), ((0, 0), (2, 2))), "one full column"),
        (np.pad(np.ones((1, 5), bool), ((3, 3), (0, 0))), "one full row"),
        (np.zeros((4, 3), bool), "empty"),
    ],
)
def test_region_crop_edge_cases(mask: np.ndarray, why: str) -> None:
    assert_crop_matches(mask)


@settings(max_examples=150, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 40), st.integers(1, 40))))
def test_region_crop_matches_pycocotools(mask: np.ndarray) -> None:
    assert_crop_matches(mask)


def assert_crop_matches(mask: np.ndarray) -> None:
    height, width = mask.shape
    counts = coco_counts(mask)
    rle = {"size": [height, width], "counts": counts.encode("ascii")}
    full = mask_utils.decode(rle).astype(bool)
    runs = runs_of_counts(counts)
    np.testing.assert_array_equal(np.repeat(np.arange(len(runs)) % 2, runs), full.T.ravel())
    x0, y0, crop = region_crop(counts, height=height, width=width)
    rows, columns = np.nonzero(full)
    if not len(rows):
        assert crop.size == 0
        return
    assert (x0, y0) == (columns.min(), rows.min())
    np.testing.assert_array_equal(crop, full[y0 : rows.max() + 1, x0 : columns.max() + 1])


@settings(max_examples=150, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(1, 30), st.integers(1, 30)), elements=st.integers(0, 5)),
    st.lists(st.tuples(st.integers(0, 29), st.integers(0, 29), st.integers(1, 12)), max_size=3),
)
def test_class_maps_paint_as_pycocotools_decodes(
    labels: np.ndarray, boxes: list[tuple[int, int, int]]
) -> None:
    """One region per label of a random map (they tile it), then boxes laid over them (the
    overlaps hole filling makes): painted in order with the later on top, as the reference
    decoder gives each region."""
    height, width = labels.shape
    masks = [labels == label for label in np.unique(labels) if label]
    for y, x, side in boxes:
        box = np.zeros_like(labels, bool)
        box[y : y + side, x : x + side] = True
        masks.append(box)
    rows = [{"class_id": 1 + n % 6, "rle": coco_counts(mask)} for n, mask in enumerate(masks)]
    expected = np.full((height, width), 3, np.uint8)
    for row in rows:
        rle = {"size": [height, width], "counts": row["rle"].encode("ascii")}
        expected[mask_utils.decode(rle).astype(bool)] = row["class_id"]
    np.testing.assert_array_equal(class_map_of(rows, height, width, 3), expected)
    runs, heads = runs_of_many([row["rle"] for row in rows])
    ends = [*heads[1:].tolist(), len(runs)][: len(heads)]
    for row, head, end in zip(rows, heads.tolist(), ends, strict=True):
        np.testing.assert_array_equal(runs[head:end], runs_of_counts(row["rle"]))


@pytest.mark.parametrize("counts", ["a", "P\x7f", "é", coco_counts(np.ones((5, 5)))])
def test_bad_counts_are_refused(counts: str) -> None:
    with pytest.raises(ValueError):
        region_crop(counts, height=4, width=4)


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("a.jpg", "a"),  # the extension goes
        ("sub/dir/a.b.png", "sub/dir/a.b"),  # only the last one
        ("./dot/./a.jpg", "dot/a"),  # '.' folders go
        ("a//b.jpg", "a/b"),  # so do empty ones
        ("../a.jpg", "__/a"),  # '..' stays a folder, but a harmless one
        ("/abs.jpg", "abs"),  # absolute becomes relative
        ("..jpg", "_"),  # a name that would be '.'
        ("...jpg", "__"),  # or '..'
        ("sub/", "sub/_"),  # no name at all
        (".hidden", ".hidden"),  # a leading dot is not an extension
        # What POSIX and S3 take stays, Windows' reserved characters and backslashes too ...
        ('a<b>:c"|?*\\d\te.png', 'a<b>:c"|?*\\d\te'),
        ("..\\a.jpg", "..\\a"),  # one name, not a folder: no way up
        (".../é ü.jpg", ".../é ü"),
        # ... NUL and line breaks do not.
        ("t\x00a\nb\rc\u2028d.png", "t_a_b_c_d"),
    ],
)
def test_mask_name(key: str, name: str) -> None:
    assert mask_name(key) == name
