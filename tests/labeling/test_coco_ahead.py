"""COCO annotations encoded while labeling: the run's export writes the same bytes as an
export that reads the records back, and falls back to reading them whenever it must."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

import pipeline.formats.coco as coco
from deeplab.scenes import scenes
from pipeline.config import RunConfig
from pipeline.formats import export, open_run
from pipeline.geometry.policy import RegionPolicy
from pipeline.geometry.regions import image_regions
from pipeline.labeling import coco_ahead
from pipeline.labeling.annotate import annotate
from pipeline.run.tables import regions_table
from pipeline.run.view import ExportOptions


def scene_folder(folder: Path, count: int, *, seed: int = 300) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(scenes(seed, count, height=97, width=131)):
        Image.fromarray(scene.image).save(folder / f"scene {seed + i}.png")
    return folder


def run(source: Path, out: Path) -> None:
    annotate(RunConfig(source=str(source), out=str(out), shard_size=3, device="cpu"))


def exported_again(out: Path) -> bytes:
    """coco.json as an export from the run folder alone writes it."""
    export(open_run(str(out)), ["coco"], ExportOptions())
    return (out / "exports" / "coco.json").read_bytes()


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Calls of the export's own encoding in this process (the tracing workers are others)."""
    calls: list[int] = []
    real = coco.coco_annotations

    def counting(*args: object) -> object:
        calls.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(coco, "coco_annotations", counting)
    return calls


def test_a_run_writes_the_annotations_encoded_while_labeling(
    tmp_path: Path, counted: list[int]
) -> None:
    source = scene_folder(tmp_path / "in", 7)
    (source / "broken.png").write_bytes(b"not a png")  # a failed image has no annotations
    run(source, tmp_path / "out")
    written = (tmp_path / "out" / "exports" / "coco.json").read_bytes()
    assert not counted  # no region was read back and encoded at the end
    assert b'"annotations":[{' in written
    assert exported_again(tmp_path / "out") == written
    assert counted


def test_a_second_pass_reads_the_first_passes_records(tmp_path: Path, counted: list[int]) -> None:
    source = scene_folder(tmp_path / "in", 4)
    run(source, tmp_path / "out")
    scene_folder(source, 2, seed=400)
    counted.clear()
    run(source, tmp_path / "out")  # the first pass's shards were encoded by another lease
    assert counted
    written = (tmp_path / "out" / "exports" / "coco.json").read_bytes()
    assert exported_again(tmp_path / "out") == written


def test_past_the_limit_nothing_is_held_and_the_records_are_read(
    tmp_path: Path, counted: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coco_ahead, "LIMIT_BYTES", 1000)
    run(scene_folder(tmp_path / "in", 5), tmp_path / "out")
    assert counted
    written = (tmp_path / "out" / "exports" / "coco.json").read_bytes()
    assert exported_again(tmp_path / "out") == written


def test_the_store_holds_a_shards_last_try_for_its_lease_only() -> None:
    coco_ahead.keep("other", "shard-a", {"x": b"{}"})
    coco_ahead.keep("lease", "shard-a", {"i": b"{1}", "j": b""})
    coco_ahead.keep("lease", "shard-a", {"i": b"{2}"})  # the shard tried again
    coco_ahead.keep("lease", "shard-b", {"k": b"{3}"})
    assert coco_ahead.take("lease") == {"shard-a": {"i": b"{2}"}, "shard-b": {"k": b"{3}"}}
    assert coco_ahead.take("lease") is None
    assert coco_ahead.take("other") is None  # let go when another lease's were taken


def test_over_the_limit_a_lease_keeps_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coco_ahead, "LIMIT_BYTES", 10)
    coco_ahead.keep("lease", "shard-a", {"i": b"12345"})
    coco_ahead.keep("lease", "shard-b", {"j": b"123456"})
    coco_ahead.keep("lease", "shard-c", {"k": b"1"})
    assert coco_ahead.take("lease") is None


def test_an_image_is_encoded_the_same_alone_as_with_others() -> None:
    """Whole-number polygons are written as ints, others as floats, region by region: an
    image's annotations do not depend on what else is encoded with them."""
    class_map = np.zeros((40, 50), np.uint8)
    class_map[5:20, 5:25] = 1
    class_map[25:35, 30:45] = 2
    tables = []
    for image_id in ("a" * 16, "b" * 16):
        columns = image_regions(
            class_map, np.full_like(class_map, 200), image_id=image_id, policy=RegionPolicy()
        ).columns
        if image_id.startswith("b"):  # its first region off the pixel corners
            shifted = columns.coordinates.copy()
            shifted[: columns.rings[1]] += 0.5
            columns = dataclasses.replace(columns, coordinates=shifted)
        names = ("background", "one", "two")
        tables.append(regions_table(columns, names, {image_id: "c:v:h"}))
    images = {t["image_id"][0].as_py(): {"height": 40, "width": 50} for t in tables}
    alone = [
        coco.encoded_annotations(t, image_id, **size)
        for t, (image_id, size) in zip(tables, images.items(), strict=True)
    ]
    together = coco.coco_annotations(
        pa.concat_tables(tables),
        {i: {"id": coco.coco_id(i), **size} for i, size in images.items()},
    )
    assert (
        b",".join(alone)
        == coco.orjson.dumps(together, option=coco.orjson.OPT_SERIALIZE_NUMPY)[1:-1]
    )
    rings = [a["segmentation"][0] for a in json.loads(b"[" + b",".join(alone) + b"]")]
    assert [type(ring[0]) for ring in rings] == [int, int, float, int]
