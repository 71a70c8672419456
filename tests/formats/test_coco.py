"""COCO export against pycocotools: it loads, evaluates to AP 1.0 against itself, and every
annotation's area and bbox are pycocotools' own on the segmentation as written."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pipeline.formats import ExportOptions, export
from pipeline.formats.coco import coco_ids
from pipeline.geometry.policy import RegionPolicy
from tests.runs import write_run


def class_maps(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    maps = {}
    for n, (h, w) in enumerate([(40, 60), (61, 37), (50, 50)]):
        class_map = np.zeros((h, w), np.uint8)
        for _ in range(6):
            y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
            dy, dx = rng.integers(4, 20, 2)
            class_map[y : y + dy, x : x + dx] = rng.integers(1, 5)
        class_map[h // 2 - 2 : h // 2 + 2, w // 2 - 2 : w // 2 + 2] = 0  # holes in some
        for _ in range(2):  # curved parts: simplified at 1.5 px, polygons draw them nearly
            centre = (int(rng.integers(6, w - 6)), int(rng.integers(6, h - 6)))
            cv2.circle(class_map, centre, int(rng.integers(8, 13)), 4, thickness=-1)
        maps[f"sub/image {n}.png"] = class_map
    return maps


# Exact polygons, polygons that only nearly draw their mask (area and box measured on the
# polygon), and those of several parts (measured on their union).
@pytest.fixture(params=[("components", 0.5), ("components", 1.5), ("semantic", 1.5)])
def coco_path(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    instances, tolerance = request.param
    view = write_run(
        tmp_path / "run",
        class_maps(7),
        policy=RegionPolicy(min_area=1, instances=instances, simplify_tolerance=tolerance),
        failed={"bad.jpg": "bad.jpg: not an image"},
    )
    (uri,) = export(view, ["coco"], ExportOptions())
    return Path(uri)


def load(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_coco_evaluates_to_ap_1_against_itself(coco_path: Path) -> None:
    truth = load(coco_path)
    detections = truth.loadRes(json.loads(coco_path.read_text())["annotations"])
    evaluator = COCOeval(truth, detections, iouType="segm")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_area_and_bbox_are_pycocotools_on_the_written_segmentation(coco_path: Path) -> None:
    coco = load(coco_path)
    kinds = set()
    for annotation in coco.dataset["annotations"]:
        image = coco.imgs[annotation["image_id"]]
        rle = coco.annToRLE(annotation)
        assert annotation["area"] == int(mask_utils.area(rle))
        assert annotation["bbox"] == mask_utils.toBbox(rle).tolist()
        assert annotation["iscrowd"] == 0
        assert coco.annToMask(annotation).shape == (image["height"], image["width"])
        kinds.add(type(annotation["segmentation"]).__name__)
    assert kinds == {"list", "dict"}  # polygons, and RLE for the regions with holes


def test_regions_with_holes_or_failed_fidelity_are_rle(tmp_path: Path) -> None:
    class_map = np.zeros((30, 30), np.uint8)
    class_map[2:12, 2:12] = 1
    class_map[5:8, 5:8] = 0  # a hole
    for y in range(14, 29):  # a staircase band: simplified at 1 px it keeps IoU 0.957
        class_map[y, y - 13 : y - 10] = 2
    view = write_run(
        tmp_path / "run",
        {"a.png": class_map},
        policy=RegionPolicy(min_area=1, simplify_tolerance=1.0, min_fidelity=0.97),
    )
    rows = {r["region_id"]: r for r in view.regions.to_pylist()}
    coco = json.loads(Path(export(view, ["coco"], ExportOptions())[0]).read_text())
    for annotation in coco["annotations"]:
        row = next(r for r in rows.values() if int(r["region_id"][:13], 16) == annotation["id"])
        has_holes = any(len(p) > 1 for p in row["polygons"])
        expect_rle = has_holes or row["geometry"] == "rle"
        assert isinstance(annotation["segmentation"], dict) == expect_rle
        if expect_rle:
            assert annotation["segmentation"]["counts"] == row["rle"]
    assert any(r["geometry"] == "rle" for r in rows.values())


def test_ids_are_stable_and_failed_images_left_out(tmp_path: Path) -> None:
    maps = class_maps(3)
    first = json.loads(
        Path(export(write_run(tmp_path / "a", maps), ["coco"], ExportOptions())[0]).read_text()
    )
    del maps["sub/image 1.png"]
    second = json.loads(
        Path(export(write_run(tmp_path / "b", maps), ["coco"], ExportOptions())[0]).read_text()
    )
    ids = {a["id"] for a in first["annotations"]}
    assert {a["id"] for a in second["annotations"]} < ids  # removing an image renumbers nothing
    assert len(ids) == len(first["annotations"])
    assert all(i["file_name"] != "bad.jpg" for i in first["images"])
    assert [c["name"] for c in first["categories"]] == ["disc", "box", "triangle", "ring"]


def test_ids_are_the_first_13_hex_digits_however_the_column_is_held() -> None:
    rng = np.random.default_rng(0)
    ids = [f"{v:016x}" for v in rng.integers(0, 2**63, 40, dtype=np.int64)]
    ids[7] = ids[7].upper()
    expected = [int(h[:13], 16) for h in ids]
    column = pa.chunked_array([ids[:15], ids[15:]]).slice(3)
    assert coco_ids(column) == expected[3:]
    assert coco_ids(pa.chunked_array([[*ids[:5], "abc"]])) == [*expected[:5], 0xABC]
    assert coco_ids(pa.chunked_array([], pa.string())) == []


def test_traced_polygons_are_written_as_whole_numbers(coco_path: Path) -> None:
    text = coco_path.read_text()
    polygons = [
        ring
        for a in json.loads(text)["annotations"]
        if isinstance(a["segmentation"], list)
        for ring in a["segmentation"]
    ]
    assert polygons and all(isinstance(v, int) for ring in polygons for v in ring)
