"""Small shards merged into full ones: the same labels and exports, fewer files, and a crash
half-way loses nothing."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest

from deeplab.scenes import scenes
from pipeline.formats import ExportOptions, export, open_run
from pipeline.geometry.policy import RegionPolicy
from pipeline.geometry.regions import image_regions
from pipeline.labeling.shard_plan import image_id_for
from pipeline.run.compact import MIN_SMALL_SHARDS, compact
from pipeline.run.layout import RunLayout
from pipeline.run.ledger import Ledger
from pipeline.run.manifest import ModelInfo, RunManifest
from pipeline.run.records import RegionColumns
from pipeline.run.tables import images_table, regions_table, write_table
from pipeline.storage import LocalStorage
from tests.helpers import latest
from tests.runs import CLASS_NAMES, image_record

SHARD_SIZE = 8
FORMATS = ["coco", "label-studio", "cvat", "masks"]


def _grown_run(out: Path, passes: int) -> RunLayout:
    """``passes`` small reruns: each labels two new images and one image again."""
    layout = RunLayout(LocalStorage(), str(out))
    maps = iter(scenes(11, 3 * passes, height=32, width=40))
    for generation in range(passes):
        keys = [f"day{generation:02d}/{n}.jpg" for n in range(2)]
        keys += [f"day{generation - 1:02d}/0.jpg"] if generation else []
        shard = f"shard-{generation:04d}-00000"
        regions, images = [], []
        for key in sorted(keys):
            class_map = next(maps).mask
            found = image_regions(
                class_map,
                class_map * 40 + 30,
                image_id=image_id_for(key),
                policy=RegionPolicy(min_area=1),
            ).regions
            regions += found
            record = image_record(key, image_id_for(key), "/in", class_map.shape, len(found))
            images.append(dataclasses.replace(record, shard=shard))
        lineage = {r.image_id: f"{r.content_hash}:g{generation}" for r in images}
        table = regions_table(RegionColumns.of(regions), CLASS_NAMES, lineage)
        write_table(layout.storage, layout.records(shard), table)
        write_table(layout.storage, layout.images(shard), images_table(images))
    now = datetime(2026, 1, 1, tzinfo=UTC)
    model = ModelInfo(
        ref="t", arch="a", source="prelabel", model_version="v1", class_names=CLASS_NAMES
    )
    manifest = RunManifest(
        prelabel_version="test",
        config={"source": "/in"},
        model=model,
        shards=(),
        started_at=now,
        finished_at=now,
        images=0,
        images_failed=0,
        regions=0,
    )
    layout.storage.write_atomic(layout.manifest, manifest.model_dump_json().encode())
    return layout


def _exported(out: Path) -> dict[str, bytes]:
    export(open_run(str(out)), FORMATS, ExportOptions())
    root = out / "exports"
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_small_shards_become_full_ones_with_the_same_labels(tmp_path: Path) -> None:
    layout = _grown_run(tmp_path, MIN_SMALL_SHARDS + 4)
    before_images, before_regions = latest(layout)
    before = _exported(tmp_path)
    ledger = compact(layout, Ledger.load(layout), SHARD_SIZE)
    images, regions = latest(layout)
    assert images.drop_columns(["shard"]).equals(before_images.drop_columns(["shard"]))
    assert regions.equals(before_regions)
    assert _exported(tmp_path) == before
    on_disk = sorted(p.name for p in (tmp_path / "images").iterdir())
    expected = -(-images.num_rows // SHARD_SIZE)
    assert len(on_disk) == expected and all(n.startswith("shard-0020-") for n in on_disk)
    assert sorted(p.name for p in (tmp_path / "records").iterdir()) == on_disk
    # The index saved by the compaction is what reading every shard finds.
    assert Ledger.load(layout).images.equals(Ledger.load(layout, use_index=False).images)
    assert ledger.images.equals(Ledger.load(layout, use_index=False).images)


def test_a_few_small_shards_are_left_as_they_are(tmp_path: Path) -> None:
    layout = _grown_run(tmp_path, MIN_SMALL_SHARDS - 1)
    ledger = Ledger.load(layout)
    assert compact(layout, ledger, SHARD_SIZE) is ledger
    assert len(list((tmp_path / "images").iterdir())) == MIN_SMALL_SHARDS - 1


def test_a_compaction_stopped_before_deleting_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = _grown_run(tmp_path, MIN_SMALL_SHARDS + 4)
    before_images, before_regions = latest(layout)

    def crash(self: LocalStorage, uri: str) -> None:
        raise OSError("killed")

    monkeypatch.setattr(LocalStorage, "delete", crash)
    with pytest.raises(OSError, match="killed"):
        compact(layout, Ledger.load(layout), SHARD_SIZE)
    monkeypatch.undo()
    images, regions = latest(layout)  # old and new shards both there: the new ones win
    assert images.drop_columns(["shard"]).equals(before_images.drop_columns(["shard"]))
    assert regions.equals(before_regions)
    compact(layout, Ledger.load(layout), SHARD_SIZE)  # the next run finishes the job
    images, regions = latest(layout)
    assert images.drop_columns(["shard"]).equals(before_images.drop_columns(["shard"]))
    assert regions.equals(before_regions)
    assert len(list((tmp_path / "images").iterdir())) == -(-images.num_rows // SHARD_SIZE)
