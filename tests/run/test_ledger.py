"""The ledger: which images a run folder holds, which a rerun must label, and what it refuses."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.run.ledger as ledger_module
from pipeline.geometry.policy import RegionPolicy
from pipeline.geometry.regions import image_regions
from pipeline.run.layout import RunLayout
from pipeline.run.ledger import READ_COLUMNS, LatestRows, Ledger, LedgerConflictError
from pipeline.run.tables import REGIONS_SCHEMA, images_table, regions_table, write_table
from pipeline.storage import LocalStorage, ObjectInfo
from tests.helpers import latest, record_reads
from tests.runs import CLASS_NAMES, image_record


def _shard(layout: RunLayout, shard: str, rows: list[tuple[str, str, str, bool]]) -> None:
    """Write a shard: (key, etag, status, retryable) per image; each ok image has one region,
    a square whose side is the shard's generation + 2 (so regions tell shards apart)."""
    generation = int(shard.split("-")[1])
    records, columns = [], []
    for key, etag, status, retryable in rows:
        record = image_record(key, f"id-{key}", "/in", (8, 8) if status == "ok" else None, 0)
        records.append(
            dataclasses.replace(
                record,
                shard=shard,
                etag=etag,
                status=status,
                retryable=retryable,
                region_count=int(status == "ok"),
            )
        )
        if status == "ok":
            side = generation + 2
            class_map = np.zeros((8, 8), np.uint8)
            class_map[:side, :side] = 1
            found = image_regions(
                class_map,
                np.full_like(class_map, 200),
                image_id=f"id-{key}",
                policy=RegionPolicy(min_area=1),
            )
            columns.append(found.columns)
    write_table(layout.storage, layout.images(shard), images_table(records))
    lineage = {r.image_id: f"h:{r.model_version}:{r.config_hash}" for r in records}
    regions = [regions_table(c, CLASS_NAMES, lineage) for c in columns]
    table = pa.concat_tables(regions) if regions else REGIONS_SCHEMA.empty_table()
    write_table(layout.storage, layout.records(shard), table)


@pytest.fixture
def layout(tmp_path: Path) -> RunLayout:
    layout = RunLayout(LocalStorage(), str(tmp_path / "run"))
    _shard(layout, "shard-0000-00000", [("a", "e1", "ok", False), ("b", "e1", "ok", False)])
    _shard(layout, "shard-0001-00000", [("b", "e2", "ok", False), ("c", "e1", "failed", True)])
    _shard(layout, "shard-0001-00001", [("d", "e1", "failed", False)])
    return layout


def _item(key: str, etag: str) -> ObjectInfo:
    return ObjectInfo(uri=f"/in/{key}", key=key, size=1, etag=etag)


def test_the_latest_row_of_each_key_wins(layout: RunLayout) -> None:
    ledger = Ledger.load(layout)
    assert ledger.images.column("key").to_pylist() == ["a", "b", "c", "d"]
    assert ledger.images.column("etag").to_pylist() == ["e1", "e2", "e1", "e1"]
    assert ledger.shards == ("shard-0000-00000", "shard-0001-00000", "shard-0001-00001")
    assert ledger.next_generation == 2


def test_a_rerun_labels_new_changed_and_retryable_images_only(layout: RunLayout) -> None:
    ledger = Ledger.load(layout)
    listed = [
        _item("a", "e1"),  # labeled, unchanged: done
        _item("b", "e1"),  # labeled at e2, now e1: changed
        _item("c", "e1"),  # failed reading (retryable): again
        _item("d", "e1"),  # failed as bad input, same bytes: not again
        _item("e", "e1"),  # new
    ]
    assert [i.key for i in ledger.todo(listed)] == ["b", "c", "e"]
    assert [i.key for i in ledger.todo([_item("d", "e2")])] == ["d"]  # its bytes changed


def test_regions_are_those_of_each_images_latest_row_in_key_order(layout: RunLayout) -> None:
    regions = latest(layout)[1]
    assert regions.column("image_id").to_pylist() == ["id-a", "id-b"]
    # b's region is the one of generation 1 (a 3x3 square), not generation 0's 2x2.
    assert regions.column("area").to_pylist() == [4, 9]


def test_another_model_or_config_is_refused_naming_the_folder(layout: RunLayout) -> None:
    ledger = Ledger.load(layout)
    ledger.check(model_version="v1", config_hash="c1", out="RUN")
    with pytest.raises(LedgerConflictError, match=r"RUN holds labels from another model \(v1"):
        ledger.check(model_version="v2", config_hash="c1", out="RUN")
    with pytest.raises(LedgerConflictError, match="another labeling config"):
        ledger.check(model_version="v1", config_hash="c2", out="RUN")


def test_damaged_files_are_named_and_the_rest_still_loads(layout: RunLayout) -> None:
    images = Path(layout.images("shard-0001-00001"))
    images.write_bytes(images.read_bytes()[:40])  # a truncated copy
    Path(layout.records("shard-0000-00000")).unlink()
    ledger = Ledger.load(layout)
    assert [d.shard for d in ledger.damaged] == ["shard-0001-00001"]
    assert ledger.images.column("key").to_pylist() == ["a", "b", "c"]
    assert [(d.shard, d.reason) for d in ledger.damaged_files(layout)] == [
        ("shard-0000-00000", "missing")
    ]


def test_an_empty_folder_is_an_empty_ledger(tmp_path: Path) -> None:
    ledger = Ledger.load(RunLayout(LocalStorage(), str(tmp_path / "none")))
    assert ledger.images.num_rows == 0 and ledger.shards == () and ledger.next_generation == 0


def _reading(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The shard files every later ``storage.read`` opens, by folder and name."""
    return record_reads(monkeypatch, lambda uri: "/".join(Path(uri).parts[-2:]))


def test_a_saved_index_is_read_instead_of_the_shards_it_holds(
    layout: RunLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = Ledger.load(layout)
    assert full.merged == 3
    full.save_index(layout)
    _shard(layout, "shard-0002-00000", [("b", "e3", "ok", False), ("e", "e1", "ok", False)])
    reads = _reading(monkeypatch)
    ledger = Ledger.load(layout)
    assert reads == ["run/index.parquet", "images/shard-0002-00000.parquet"]
    assert ledger.merged == 1 and ledger.indexed == set(full.shards)
    # The same rows as reading every shard, the new shard's winning.
    assert ledger.images.equals(Ledger.load(layout, use_index=False).images)
    assert ledger.images.column("etag").to_pylist() == ["e1", "e3", "e1", "e1", "e1"]
    ledger.save_index(layout)
    reads.clear()
    assert Ledger.load(layout).images.equals(ledger.images)
    assert reads == ["run/index.parquet"]


def test_an_index_naming_a_shard_that_is_gone_is_rebuilt(layout: RunLayout) -> None:
    """A shard moved aside as damaged may have hidden older rows of its keys: they count
    again, as reading every shard finds them."""
    Ledger.load(layout).save_index(layout)
    Path(layout.images("shard-0001-00000")).unlink()
    ledger = Ledger.load(layout)
    assert ledger.indexed == set() and ledger.merged == 2
    assert ledger.images.column("etag").to_pylist() == ["e1", "e1", "e1"]  # b at generation 0


def test_an_unreadable_index_is_rebuilt_from_the_shards(
    layout: RunLayout, caplog: pytest.LogCaptureFixture
) -> None:
    Ledger.load(layout).save_index(layout)
    index = Path(layout.index)
    index.write_bytes(index.read_bytes()[:50])
    ledger = Ledger.load(layout)
    assert ledger.images.equals(Ledger.load(layout, use_index=False).images)
    assert "rebuilding it from the shards" in caplog.text


def test_a_truncated_images_file_known_from_the_index_is_found_by_its_tail(
    layout: RunLayout,
) -> None:
    Ledger.load(layout).save_index(layout)
    images = Path(layout.images("shard-0001-00001"))
    images.write_bytes(images.read_bytes()[:-3])
    damage = Ledger.load(layout).damaged_files(layout)
    assert [(d.shard, d.reason) for d in damage] == [
        ("shard-0001-00001", "truncated: no Parquet footer")
    ]


def _rows(rows: LatestRows, columns: Sequence[str] = READ_COLUMNS) -> pa.Table:
    return pa.Table.from_batches(list(rows.batches(columns)))


def test_a_run_is_read_from_the_index_alone_while_it_holds_every_shard(
    layout: RunLayout, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What exports read a run with: the index's few columns, with their counts. An index
    behind the shards is merged with them, as a ledger does."""
    full = Ledger.load(layout)
    full.save_index(layout)
    reads = _reading(monkeypatch)
    rows = LatestRows.load(layout)
    assert reads == ["run/index.parquet"] and "rebuilding" not in caplog.text
    assert _rows(rows).equals(full.images.select(READ_COLUMNS))
    assert (rows.images, rows.regions, rows.labeled) == (4, 2, 2)
    assert rows.held_in == ("shard-0000-00000", "shard-0001-00000", "shard-0001-00001")
    _shard(layout, "shard-0002-00000", [("b", "e3", "ok", False)])
    behind = LatestRows.load(layout)
    assert _rows(behind).equals(Ledger.load(layout, use_index=False).images.select(READ_COLUMNS))
    assert behind.held_in == (
        "shard-0000-00000",
        "shard-0002-00000",
        "shard-0001-00000",
        "shard-0001-00001",
    )


def test_an_index_damaged_inside_is_found_when_the_run_is_opened(
    layout: RunLayout, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Its footer reads, a data page does not: the run's rows come from the shards, not an
    export that fails half-way."""
    Ledger.load(layout).save_index(layout)
    data = bytearray(Path(layout.index).read_bytes())
    data[4:200] = bytes(196)  # the first column chunks' pages
    Path(layout.index).write_bytes(bytes(data))
    rows = LatestRows.load(layout)
    assert "rebuilding it from the shards" in caplog.text
    assert isinstance(rows.source, pa.Table)
    assert _rows(rows).equals(Ledger.load(layout, use_index=False).images.select(READ_COLUMNS))


def test_an_index_of_many_row_groups_reads_back_the_same_rows(
    layout: RunLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large index is written a row group at a time; whole or in a few columns it reads
    back as the rows it was made from, and a rerun matches a listing against it."""
    monkeypatch.setattr(ledger_module, "_INDEX_ROWS", 2)
    full = Ledger.load(layout)
    full.save_index(layout)
    assert pq.ParquetFile(layout.index).metadata.num_row_groups > 1
    indexed = Ledger.load(layout)
    assert indexed.images.equals(full.images) and indexed.indexed == set(full.shards)
    rows = LatestRows.load(layout)
    assert len(list(rows.batches(["image_id"]))) == 2
    assert _rows(rows, ["image_id", "shard"]).equals(full.images.select(["image_id", "shard"]))
    listed = [_item(key, "e1") for key in ("a", "b", "c", "z")]
    assert indexed.todo(listed) == full.todo(listed)


def test_the_index_is_read_from_disk_pass_by_pass_and_removed_with_the_rows(
    layout: RunLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index's bytes are not held for as long as the run is read: passes read a copy on
    disk, which the index can be replaced under, two passes may interleave, and the copy goes
    when the rows are let go."""
    monkeypatch.setattr(ledger_module, "_INDEX_ROWS", 2)
    full = Ledger.load(layout)
    full.save_index(layout)
    rows = LatestRows.load(layout)
    expected = full.images.select(["key"])
    Path(layout.index).write_bytes(b"replaced")
    first, second = rows.batches(["key"]), rows.batches(["key"])
    interleaved = [batch for pair in zip(first, second, strict=True) for batch in pair]
    assert pa.Table.from_batches(interleaved[::2]).equals(expected)
    assert pa.Table.from_batches(interleaved[1::2]).equals(expected)
    assert not isinstance(rows.source, pa.Table)
    spooled = Path(rows.source.file.name)
    assert spooled.exists()
    del rows, first, second
    assert not spooled.exists()
