"""A shard: planned from a listing, labeled and written whole, its figures taken from its rows."""

from __future__ import annotations

import dataclasses
import io
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.config import RunConfig
from pipeline.labeling.annotate import run_lease
from pipeline.labeling.shard_plan import Shard, plan_shards, shard_stats
from pipeline.labeling.shards import process_shard
from pipeline.run.layout import RunLayout
from pipeline.storage import LocalStorage, ObjectInfo

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _items(count: int) -> list[ObjectInfo]:
    return [ObjectInfo(uri=f"/in/{i}.png", key=f"{i}.png", size=1, etag="e") for i in range(count)]


def test_shards_cut_a_listing_in_order_named_by_generation() -> None:
    shards = plan_shards(_items(7), 3, generation=12, lease="L")
    assert [s.shard_id for s in shards] == [
        "shard-0012-00000",
        "shard-0012-00001",
        "shard-0012-00002",
    ]
    assert [len(s.items) for s in shards] == [3, 3, 1]
    assert [i for s in shards for i in s.items] == _items(7)
    assert {s.lease for s in shards} == {"L"}
    assert plan_shards([], 3, generation=0, lease="L") == []


def test_shard_figures_are_summed_from_its_rows() -> None:
    rows = [
        {"status": "ok", "region_count": 4, "read_ms": 1.0, "decode_ms": 2.0,
         "predict_ms": 3.0, "regions_ms": 4.0},
        {"status": "failed", "region_count": 0, "read_ms": 500.0, "decode_ms": 0.0,
         "predict_ms": 0.0, "regions_ms": 0.0},
    ]  # fmt: skip
    stats = shard_stats("s", rows)
    assert (stats.images, stats.failed, stats.regions) == (2, 1, 4)
    assert stats.work_seconds == 0.51


def test_a_shard_writes_both_files_whole_and_a_bad_image_fails_alone(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    for name in ("scene-000.jpg", "scene-001.jpg"):
        shutil.copy(EXAMPLES / name, source / name)
    (source / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "run"
    config = RunConfig(source=str(source), out=str(out), device="cpu", engine="torch")
    items = sorted(LocalStorage().list(str(source)), key=lambda i: i.key)
    with run_lease(config) as lease:  # a shard writes only under its run's lease
        shard = Shard("shard-0000-00000", tuple(items), lease=lease.token)
        stats = process_shard(shard, config)

    layout = RunLayout(LocalStorage(), str(out))
    images = pq.read_table(io.BytesIO(Path(layout.images(shard.shard_id)).read_bytes()))
    regions = pq.read_table(io.BytesIO(Path(layout.records(shard.shard_id)).read_bytes()))
    rows = {row["key"]: row for row in images.to_pylist()}
    assert sorted(rows) == ["broken.jpg", "scene-000.jpg", "scene-001.jpg"]
    assert rows["broken.jpg"]["status"] == "failed"
    assert "broken.jpg" in rows["broken.jpg"]["error"]
    assert not rows["broken.jpg"]["retryable"]  # the file's fault: not retried unchanged
    assert {rows[k]["status"] for k in ("scene-000.jpg", "scene-001.jpg")} == {"ok"}
    assert regions.num_rows == sum(row["region_count"] for row in rows.values()) > 0
    assert set(regions.column("image_id").to_pylist()) <= {
        rows[k]["image_id"] for k in ("scene-000.jpg", "scene-001.jpg")
    }
    read_back = shard_stats(shard.shard_id, images.to_pylist())  # timings stored as float32
    assert stats == dataclasses.replace(read_back, work_seconds=stats.work_seconds)
    assert stats.work_seconds == pytest.approx(read_back.work_seconds, rel=1e-6)
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{shard.shard_id}.parquet"]
