"""The records file encoded while a shard runs: the rows of the table written at once."""

from __future__ import annotations

import io
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.geometry.policy import RegionPolicy
from pipeline.geometry.regions import image_regions
from pipeline.labeling import records_writer
from pipeline.labeling.records_writer import RecordsWriter
from pipeline.run.tables import REGIONS_SCHEMA, regions_table


def rows_of(key: str, seed: int) -> pa.Table:
    """An image's rows: the regions of a random class map."""
    rng = np.random.default_rng(seed)
    class_map = rng.integers(0, 3, (12, 16), dtype=np.uint8)
    columns = image_regions(
        class_map, np.full_like(class_map, 200), image_id=key, policy=RegionPolicy(min_area=1)
    ).columns
    return regions_table(columns, ("background", "a", "b"), {key: "c:m:h"})


def test_rows_arrive_in_any_order_and_are_written_in_key_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(records_writer, "GROUP_IMAGES", 3)
    keys = [f"img-{i:02d}" for i in range(11)]
    tables = {k: rows_of(k, i) for i, k in enumerate(keys)}
    failed = {"img-04", "img-09"}
    writer = RecordsWriter(reversed(keys))
    arrival = keys[:]
    random.Random(1).shuffle(arrival)
    for key in arrival:
        writer.add(key, None if key in failed else tables[key])
    written = pq.ParquetFile(io.BytesIO(writer.finish()))
    expected = pa.concat_tables([tables[k] for k in keys if k not in failed])
    assert written.read().equals(expected)
    assert written.metadata.num_row_groups == 4  # 11 images, 3 to a group
    assert written.schema_arrow == REGIONS_SCHEMA


def test_a_shard_with_no_regions_writes_an_empty_table() -> None:
    writer = RecordsWriter(["a", "b"])
    writer.add("b", None)
    writer.add("a", REGIONS_SCHEMA.empty_table())
    table = pq.read_table(io.BytesIO(writer.finish()))
    assert table.num_rows == 0 and table.schema == REGIONS_SCHEMA


def test_an_image_never_given_is_an_error_not_a_file_without_it() -> None:
    writer = RecordsWriter(["a", "b", "c"])
    writer.add("a", rows_of("a", 0))
    writer.add("c", rows_of("c", 1))
    with pytest.raises(RuntimeError, match="'b'"):
        writer.finish()
    writer.abandon()
