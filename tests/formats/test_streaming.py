"""Exports written shard by shard: the same bytes as the whole-run exports wrote, each shard
file read once, nothing left behind by an export that fails half-way."""

from __future__ import annotations

import gc
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import pipeline.run.ledger as ledger_module
from pipeline.formats import ExportOptions, export, open_run
from pipeline.run.layout import RunLayout
from pipeline.run.ledger import Ledger
from pipeline.run.view import iter_parts
from pipeline.storage import LocalStorage
from tests.formats.sharded_run import write_sharded_run
from tests.helpers import record_reads

GOLDEN = json.loads((Path(__file__).parent / "golden_exports.json").read_text())
EVERY = ["coco", "label-studio", "cvat", "masks", "parquet"]
CASES = {
    "default": (EVERY, ExportOptions()),
    "brush-wkb": (
        ["label-studio", "parquet"],
        ExportOptions(ls_regions="brush", wkb=True, image_url_prefix="https://img.example/"),
    ),
}


@pytest.mark.parametrize("batch", [None, 3])
@pytest.mark.parametrize("case", sorted(CASES))
def test_streamed_exports_are_byte_for_byte_the_whole_run_ones(
    case: str, batch: int | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``golden_exports.json`` holds the digests the whole-run exporters wrote for this run
    folder, before exports were streamed. ``batch``: the run's rows read from an index of
    row groups that small, so that runs of one shard span several."""
    write_sharded_run(tmp_path)
    if batch:
        monkeypatch.setattr(ledger_module, "_INDEX_ROWS", batch)
        layout = RunLayout(LocalStorage(), str(tmp_path))
        Ledger.load(layout).save_index(layout)
        assert pq.ParquetFile(layout.index).metadata.num_row_groups > 3
    formats, options = CASES[case]
    export(open_run(str(tmp_path)), formats, options)
    root = tmp_path / "exports"
    written = {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }
    assert written == GOLDEN[case]


@pytest.mark.parametrize("name", EVERY)
def test_exports_leave_no_garbage_for_the_cycle_collector(name: str, tmp_path: Path) -> None:
    """Exports run with the cycle collector off (they make millions of objects), so an object
    cycle made per image would stay until the export ends: at 10^6 images, hundreds of MB."""
    write_sharded_run(tmp_path)
    view = open_run(str(tmp_path))
    gc.collect()
    export(view, [name], ExportOptions())
    assert gc.collect() == 0


def test_each_shard_file_is_read_once_per_pass_in_key_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_sharded_run(tmp_path)
    view = open_run(str(tmp_path))
    reads = record_reads(monkeypatch, lambda uri: Path(uri).relative_to(tmp_path).as_posix())
    parts = list(view.parts())
    keys = [key for part in parts for key in part.images["key"].to_pylist()]
    assert keys == sorted(keys) and len(keys) == view.image_count
    assert len(reads) == len(set(reads))  # the second pass's shards stay open, not re-read
    assert {r.split("/")[0] for r in reads} == {"images", "records"}
    assert len(parts) > len(reads) / 2  # interleaved passes: more parts than shards
    assert sum(p.regions.num_rows for p in parts) == view.region_count


def test_a_shards_rows_left_out_of_the_rows_asked_for_are_skipped(tmp_path: Path) -> None:
    """As compaction asks for the images of some shards only: a shard's rows that another
    shard superseded then lie between rows of one run, and are left out of its part."""
    write_sharded_run(tmp_path)
    view = open_run(str(tmp_path))
    layout = view.layout
    every = Ledger.load(layout).images
    first_pass = every.filter(pc.starts_with(every["shard"], "shard-0000-"))
    parts = list(iter_parts(layout, first_pass.select(["image_id", "shard"]).to_batches()))
    images = pa.concat_tables([p.images for p in parts])
    assert images["image_id"].to_pylist() == first_pass["image_id"].to_pylist()
    assert len(parts) < first_pass.num_rows  # runs of several rows, some with gaps
    wanted = pc.is_in(view.regions["image_id"], first_pass["image_id"])
    assert pa.concat_tables([p.regions for p in parts]).equals(view.regions.filter(wanted))


def test_an_export_that_fails_half_way_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_sharded_run(tmp_path)
    view = open_run(str(tmp_path))
    real = type(view).parts

    def failing(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        for n, part in enumerate(real(self, *args, **kwargs)):
            if n == 2:
                raise OSError("disk gone")
            yield part

    monkeypatch.setattr(type(view), "parts", failing)
    for name in ("coco", "label-studio", "cvat", "parquet"):
        with pytest.raises(OSError, match="disk gone"):
            export(view, [name], ExportOptions())
    left = [p for p in tmp_path.joinpath("exports").rglob("*") if p.is_file()]
    assert left == []


def test_split_label_studio_files_hold_the_tasks_of_one_file_in_order(tmp_path: Path) -> None:
    """``--split N``: the one file's tasks, N to a file, each file a JSON array of its own; an
    export split coarser than an earlier one leaves none of the earlier files behind."""
    write_sharded_run(tmp_path)
    view = open_run(str(tmp_path))
    export(view, ["label-studio"], ExportOptions())
    whole = json.loads((tmp_path / "exports" / "label-studio.json").read_bytes())
    folder = tmp_path / "exports" / "label-studio"
    for size in (3, 5, len(whole) + 1):
        written = export(view, ["label-studio"], ExportOptions(ls_split=size))
        files = sorted(folder.iterdir())
        assert [Path(uri) for uri in written] == [*files, tmp_path / "exports/label-config.xml"]
        tasks = [json.loads(path.read_bytes()) for path in files]
        assert [len(t) for t in tasks[:-1]] == [size] * (len(files) - 1)
        assert 0 < len(tasks[-1]) <= size
        assert [task for part in tasks for task in part] == whole
