"""End to end: a folder of generated scenes through the demo model into a run folder."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

import deeplab
from deeplab.demo import DEMO_CHECKPOINT
from deeplab.scenes import DEMO_CLASSES, scenes
from pipeline.config import RunConfig
from pipeline.labeling.annotate import RunSummary, annotate
from tests.helpers import iou, rasterize

SHAPES = [(120, 160)] * 4 + [(97, 131), (160, 120)]  # odd and portrait sizes catch transposes


@pytest.fixture(scope="module")
def scene_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scenes")
    for i, (h, w) in enumerate(SHAPES):
        scene = next(scenes(100 + i, 1, height=h, width=w))
        target = folder / ("nested" if i == 4 else "") / f"scene {i}.png"
        target.parent.mkdir(exist_ok=True)
        Image.fromarray(scene.image).save(target)
    (folder / "README.txt").write_text("not an image, skipped by extension")
    return folder


def _config(source: Path, out: Path) -> RunConfig:
    return RunConfig(source=str(source), out=str(out), shard_size=4, batch_size=2, device="cpu")


@pytest.fixture(scope="module")
def plain_run(
    scene_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, RunSummary]:
    out = tmp_path_factory.mktemp("run") / "plain"
    return out, annotate(_config(scene_folder, out))


def test_run_folder_holds_records_images_coco_and_manifest(
    plain_run: tuple[Path, RunSummary],
) -> None:
    out, summary = plain_run
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "exports/coco.json",
        "images/shard-0000-00000.parquet",
        "images/shard-0000-00001.parquet",
        "index.parquet",
        "records/shard-0000-00000.parquet",
        "records/shard-0000-00001.parquet",
        "run.json",
    ]
    manifest = json.loads((out / "run.json").read_text())
    _, meta = deeplab.load(DEMO_CHECKPOINT)
    assert manifest["model"]["model_version"] == meta.model_version
    assert manifest["model"]["class_names"] == list(DEMO_CLASSES)
    assert manifest["config"]["shard_size"] == 4
    assert manifest["prelabel_version"]
    assert manifest["images"] == 6 and manifest["images_failed"] == 0
    assert summary.labeled == 6 and summary.regions == manifest["regions"] > 0


def test_images_table_has_one_row_per_image_at_the_original_size(
    plain_run: tuple[Path, RunSummary],
) -> None:
    out, _ = plain_run
    rows = pq.read_table(out / "images").to_pylist()
    assert [r["key"] for r in rows] == ["nested/scene 4.png"] + [
        f"scene {i}.png" for i in (0, 1, 2, 3, 5)
    ]
    for row in rows:
        i = int(row["key"].split()[-1].split(".")[0])
        assert (row["height"], row["width"]) == SHAPES[i]
        assert row["status"] == "ok" and row["error"] is None
        assert 0 < row["mean_confidence"] <= 1 and 0 <= row["low_confidence_share"] <= 1
        assert len(row["content_hash"]) == 64


def test_coco_loads_and_area_bbox_match_pycocotools(plain_run: tuple[Path, RunSummary]) -> None:
    out, _ = plain_run
    coco = COCO(str(out / "exports" / "coco.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(DEMO_CLASSES[1:])
    assert len(coco.getImgIds()) == 6
    annotations = coco.loadAnns(coco.getAnnIds())
    assert len(annotations) > 6
    for ann in annotations:
        rle = coco.annToRLE(ann)
        assert ann["area"] == int(mask_utils.area(rle))
        assert ann["bbox"] == mask_utils.toBbox(rle).tolist()
        assert ann["iscrowd"] == 0 and 0 < ann["score"] <= 1


def test_regions_rerasterize_to_the_class_map(
    plain_run: tuple[Path, RunSummary], scene_folder: Path
) -> None:
    """Against the model's own class maps, computed here without the pipeline."""
    out, _ = plain_run
    model, meta = deeplab.load(DEMO_CHECKPOINT)
    predictor = deeplab.Predictor(model, meta, device="cpu")
    regions = pq.read_table(out / "records").to_pylist()
    images = {r["image_id"]: r for r in pq.read_table(out / "images").to_pylist()}
    holes = 0
    for image_id, row in images.items():
        pixels = np.asarray(Image.open(scene_folder / row["key"]).convert("RGB"))
        class_map = predictor.predict([pixels])[0].class_map
        mine = [r for r in regions if r["image_id"] == image_id]
        components = []
        for class_id in range(1, meta.num_classes):
            n, labels = cv2.connectedComponents((class_map == class_id).view(np.uint8), 8)
            components += [
                (class_id, labels == k) for k in range(1, n) if (labels == k).sum() >= 16
            ]
        assert len(mine) == len(components)
        for region in mine:
            assert len(region["polygons"]) == 1
            drawn = rasterize([region["polygons"][0]], *class_map.shape)
            holes += len(region["polygons"][0]) - 1
            best = max((iou(drawn, comp), cid) for cid, comp in components)
            assert best[1] == region["class_id"]
            assert best[0] >= 0.98, f"{row['key']}: region IoU {best[0]:.3f}"
    assert holes > 0  # rings were predicted, and their holes kept
