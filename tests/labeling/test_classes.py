"""The run's classes: --class-map renames and merges, --classes keeps some, and every record
and export speaks the run's classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import RunConfig
from pipeline.formats import open_run
from pipeline.geometry.class_maps import class_map_of
from pipeline.geometry.policy import RegionPolicy
from pipeline.geometry.regions import image_regions
from pipeline.labeling.annotate import RunError, annotate
from pipeline.labeling.classes import ClassMapError, label_space

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MODEL = ("background", "disc", "box", "triangle", "ring")
MERGE = {"disc": "round", "ring": "round", "box": "angular", "triangle": "angular"}


def test_a_class_map_renames_and_merges_in_the_models_order() -> None:
    space = label_space(MODEL, keep=None, rename=MERGE, background=0)
    assert space.names == ("background", "round", "angular")
    assert space.lut is not None and space.lut[:5].tolist() == [0, 1, 2, 2, 1]
    assert label_space(MODEL, keep=None, rename={"ring": "background"}, background=0).names == (
        "background", "disc", "box", "triangle",
    )  # fmt: skip


def test_kept_classes_stay_and_the_rest_join_the_background() -> None:
    space = label_space(MODEL, keep=["ring", "box"], rename=None, background=0)
    assert space.names == ("background", "box", "ring")
    assert space.apply(np.arange(5, dtype=np.uint8)).tolist() == [0, 0, 1, 0, 2]
    assert label_space(MODEL, keep=None, rename=None, background=0).lut is None


@pytest.mark.parametrize(
    ("keep", "rename", "message"),
    [
        (["cat"], None, r"--classes: 'cat' is not a class of the model \(background, disc, box"),
        (None, {"dog": "animal"}, r"--class-map: 'dog' is not a class of the model \(background"),
        (["disc"], {"disc": "round"}, "--classes: 'disc' is not a class of the model"),
    ],
)
def test_a_name_the_model_lacks_is_refused_listing_its_classes(
    keep: list[str] | None, rename: dict[str, str] | None, message: str
) -> None:
    with pytest.raises(ClassMapError, match=message):
        label_space(MODEL, keep=keep, rename=rename, background=0)


def _run(tmp_path: Path, name: str, **settings: object) -> Path:
    out = tmp_path / name
    config = RunConfig(
        source=str(EXAMPLES),
        out=str(out),
        device="cpu",
        engine="torch",
        exports=("coco", "label-studio", "masks"),
        **settings,
    )
    annotate(config)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("classes")
    return {
        "plain": _run(tmp, "plain"),
        "merged": _run(tmp, "merged", class_map=MERGE),
        "kept": _run(tmp, "kept", classes=("disc", "box")),
    }


def test_every_export_carries_the_run_classes(runs: dict[str, Path]) -> None:
    out = runs["merged"]
    coco = json.loads((out / "exports" / "coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["round", "angular"]
    config = (out / "exports" / "label-config.xml").read_text()
    assert config.count('value="round"') == 2 and "disc" not in config
    labelmap = (out / "exports" / "masks" / "labelmap.txt").read_text().splitlines()[1:]
    assert [line.split(":")[0] for line in labelmap] == ["background", "round", "angular"]
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["config"]["class_map"] == MERGE
    assert manifest["model"]["class_names"] == ["background", "round", "angular"]


def test_merged_regions_are_those_of_the_plain_run_mapped(runs: dict[str, Path]) -> None:
    plain, merged = open_run(str(runs["plain"])), open_run(str(runs["merged"]))
    lut = label_space(MODEL, keep=None, rename=MERGE, background=0).lut
    assert lut is not None
    compared = 0
    for image in plain.ok_images():
        if image["fragments"]:  # speckle the plain run dropped would be missing from its map
            continue
        rows = [r for r in plain.regions.to_pylist() if r["image_id"] == image["image_id"]]
        mapped = lut[class_map_of(rows, image["height"], image["width"], 0)]
        expected = image_regions(
            mapped, np.zeros_like(mapped), image_id=image["image_id"], policy=RegionPolicy()
        ).regions
        found = [r for r in merged.regions.to_pylist() if r["image_id"] == image["image_id"]]
        assert [(r["class_id"], r["rle"]) for r in found] == [(r.class_id, r.rle) for r in expected]
        compared += 1
    assert compared >= 4


def test_kept_regions_are_the_plain_runs_of_those_classes(runs: dict[str, Path]) -> None:
    plain, kept = open_run(str(runs["plain"])), open_run(str(runs["kept"]))
    new_id = {1: 1, 2: 2}  # disc, box keep their places after the background
    expected = [
        (r["image_id"], new_id[r["class_id"]], r["rle"])
        for r in plain.regions.to_pylist()
        if r["class_id"] in new_id
    ]
    assert [(r["image_id"], r["class_id"], r["rle"]) for r in kept.regions.to_pylist()] == expected
    assert kept.class_names == ("background", "disc", "box")


def test_a_rerun_with_another_map_is_refused_like_another_model(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    config = RunConfig(
        source=str(EXAMPLES),
        out=str(runs["merged"]),
        device="cpu",
        engine="torch",
        class_map={"disc": "round"},
    )
    with pytest.raises(RunError, match="holds labels from another labeling config"):
        annotate(config)
