"""CVAT for images 1.1 XML against the run's regions: each region appears once, in order; its
polygons rasterize (pycocotools) to its mask at its recorded fidelity, and its CVAT mask, read by
a decoder written here from CVAT's description, is its mask exactly."""

from __future__ import annotations

import gc
import random
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from pipeline.formats import ExportOptions, RunView
from pipeline.formats.cvat import export_cvat
from pipeline.formats.xml_layout import indent
from pipeline.geometry.policy import RegionPolicy
from tests.helpers import iou
from tests.runs import CLASS_NAMES, write_run


def scenes(seed: int) -> dict[str, np.ndarray]:
    """Boxes, holes (mask), a staircase polygons simplify badly (mask), a full-height ring."""
    rng = np.random.default_rng(seed)
    maps = {}
    for n, (h, w) in enumerate([(41, 63), (64, 37)]):
        class_map = np.zeros((h, w), np.uint8)
        for _ in range(8):
            y, x = rng.integers(0, h), rng.integers(0, w)
            dy, dx = rng.integers(1, 20, 2)
            class_map[y : y + dy, x : x + dx] = rng.integers(1, len(CLASS_NAMES))
        class_map[h // 2 : h // 2 + 3, w // 2 : w // 2 + 3] = 0
        maps[f"sub/scene {n}.jpg"] = class_map
    stairs = np.zeros((30, 30), np.uint8)
    for y in range(2, 28):
        stairs[y, y - 1 : y + 2] = 3
    maps["stairs.png"] = stairs
    ring = np.zeros((20, 15), np.uint8)
    ring[:, 3:12] = 4  # top to bottom: its COCO runs cross columns
    ring[8:12, 6:9] = 0
    maps["ring.png"] = ring
    return maps


POLICY = RegionPolicy(min_area=1, simplify_tolerance=1.0, min_fidelity=0.97)


def exported(view: RunView) -> ET.Element:
    (uri,) = export_cvat(view, ExportOptions())
    assert uri == view.layout.export("cvat.xml")
    return ET.parse(uri).getroot()


def region_mask(row: dict[str, Any], height: int, width: int) -> np.ndarray:
    rle = {"size": [height, width], "counts": row["rle"].encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def polygons_mask(shapes: list[ET.Element], height: int, width: int) -> np.ndarray:
    out = np.zeros((height, width), bool)
    for shape in shapes:
        ring = [float(v) for pair in shape.attrib["points"].split(";") for v in pair.split(",")]
        out |= mask_utils.decode(mask_utils.frPyObjects([ring], height, width))[:, :, 0] > 0
    return out


def cvat_mask(shape: ET.Element, height: int, width: int) -> np.ndarray:
    """CVAT's brush RLE: runs over the left/top/width/height box, row by row, zeros first."""
    left, top, box_width, box_height = (
        int(shape.attrib[k]) for k in ("left", "top", "width", "height")
    )
    box = np.zeros(box_width * box_height, bool)
    position, value = 0, False
    for run in (int(v) for v in shape.attrib["rle"].split(",")):
        box[position : position + run] = value
        position, value = position + run, not value
    assert position == box.size
    out = np.zeros((height, width), bool)
    out[top : top + box_height, left : left + box_width] = box.reshape(box_height, box_width)
    return out


@pytest.mark.parametrize("seed", range(3))
def test_every_region_once_as_polygons_or_exact_mask(tmp_path: Path, seed: int) -> None:
    maps = scenes(seed)
    view = write_run(tmp_path / "run", maps, policy=POLICY, failed={"bad.jpg": "not an image"})
    root = exported(view)
    assert root.findtext("version") == "1.1"
    images = root.findall("image")
    assert [i.attrib["name"] for i in images] == sorted(maps)  # the failed image is absent
    assert [i.attrib["id"] for i in images] == [str(n) for n in range(len(maps))]
    kinds = set()
    for image in images:
        height, width = int(image.attrib["height"]), int(image.attrib["width"])
        assert (height, width) == maps[image.attrib["name"]].shape
        image_id = next(
            r["image_id"] for r in view.images.to_pylist() if r["key"] == image.attrib["name"]
        )
        shapes = list(image)
        for row in (r for r in view.regions.to_pylist() if r["image_id"] == image_id):
            truth = region_mask(row, height, width)
            label = CLASS_NAMES[row["class_id"]]
            polygons = row["polygons"]
            if row["geometry"] == "polygon" and all(len(p) == 1 for p in polygons):
                mine, shapes = shapes[: len(polygons)], shapes[len(polygons) :]
                assert [(s.tag, s.attrib["label"]) for s in mine] == [("polygon", label)] * len(
                    polygons
                )
                drawn = polygons_mask(mine, height, width)
                assert iou(drawn, truth) == pytest.approx(row["fidelity"], abs=1e-6)
            else:
                shape, shapes = shapes[0], shapes[1:]
                assert (shape.tag, shape.attrib["label"]) == ("mask", label)
                np.testing.assert_array_equal(cvat_mask(shape, height, width), truth)
                x, y, w, h = mask_utils.toBbox(
                    {"size": [height, width], "counts": row["rle"].encode("ascii")}
                ).tolist()
                assert [int(shape.attrib[k]) for k in ("left", "top", "width", "height")] == [
                    x,
                    y,
                    w,
                    h,
                ]  # the tight box
            kinds.add(row["geometry"] + str(max(len(p) for p in polygons)))
        assert shapes == []  # nothing beyond the regions
    assert {"polygon1", "polygon2", "rle1"} <= kinds  # plain polygons, holes, failed fidelity


def test_labels_leave_out_background_and_have_distinct_colours(tmp_path: Path) -> None:
    view = write_run(tmp_path / "run", {"a.png": np.ones((3, 3), np.uint8)})
    labels = exported(view).findall("meta/task/labels/label")
    assert [label.findtext("name") for label in labels] == list(CLASS_NAMES[1:])
    colours = [label.findtext("color") for label in labels]
    assert all(c is not None and len(c) == 7 and c.startswith("#") for c in colours)
    assert len(set(colours)) == len(colours)
    assert {label.findtext("type") for label in labels} == {"any"}


def test_parts_of_one_region_share_a_group(tmp_path: Path) -> None:
    class_map = np.zeros((20, 20), np.uint8)
    class_map[2:6, 2:6] = 1
    class_map[10:15, 12:18] = 1
    class_map[3:5, 12:14] = 2
    policy = RegionPolicy(min_area=1, instances="semantic")
    polygons = exported(write_run(tmp_path / "run", {"a.png": class_map}, policy=policy)).findall(
        "image/polygon"
    )
    groups = [(p.attrib["label"], p.attrib.get("group_id")) for p in polygons]
    assert groups[0] == groups[1] and groups[0][1] is not None
    assert groups[2] == ("box", None)  # one part: no group


def test_names_are_escaped_and_round_trip(tmp_path: Path) -> None:
    names = ("background", 'a<&"b', "c'd>\te")
    maps = {
        'we<ird> & "name".png': np.ones((4, 4), np.uint8),
        "tab\there.png": np.full((4, 4), 2, np.uint8),
        "ctl\x01char.png": np.full((4, 4), 2, np.uint8),  # not representable in XML 1.0
    }
    root = exported(write_run(tmp_path / "run", maps, class_names=names, policy=POLICY))
    assert [label.findtext("name") for label in root.findall("meta/task/labels/label")] == list(
        names[1:]
    )
    shapes = {i.attrib["name"]: i[0].attrib["label"] for i in root.findall("image")}
    assert shapes == {
        "ctl\ufffdchar.png": names[2],
        "tab\there.png": names[2],
        'we<ird> & "name".png': names[1],
    }


def _tree(rng: random.Random, depth: int) -> ET.Element:
    element = ET.Element("n", {"a": str(rng.random())})
    element.text = rng.choice(["x", " ", "\n", None])
    for _ in range(rng.randint(0, 3) if depth else 0):
        child = _tree(rng, depth - 1)
        child.tail = rng.choice(["y", " ", None, None])
        element.append(child)
    return element


def test_indent_lays_out_xml_as_elementtree_does_and_leaves_no_garbage() -> None:
    rng = random.Random(0)
    for _ in range(300):
        tree, level = _tree(rng, rng.randint(0, 4)), rng.randint(0, 3)
        ours, theirs = ET.fromstring(ET.tostring(tree)), ET.fromstring(ET.tostring(tree))
        ET.indent(theirs, level=level)
        gc.collect()  # ElementTree's own cycle
        indent(ours, level)
        assert gc.collect() == 0
        assert ET.tostring(ours) == ET.tostring(theirs)
