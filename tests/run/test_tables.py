"""The Parquet tables: the columnar regions table says what the regions say, ids are stable,
and a table written is the table read back."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.run.records import Region, RegionColumns
from pipeline.run.tables import (
    IMAGES_SCHEMA,
    REGIONS_SCHEMA,
    images_table,
    regions_table,
    stable_id,
    write_table,
)
from pipeline.storage import LocalStorage
from tests.runs import image_record

NAMES = ("background", "disc", "box")


def _region(image_id: str, class_id: int, polygons: tuple, geometry: str = "polygon") -> Region:
    return Region(
        image_id=image_id,
        class_id=class_id,
        score=0.5,
        low_confidence_share=0.25,
        area=12,
        bbox=(1, 2, 3, 4),
        polygons=polygons,
        rle="abc",
        fidelity=0.75,
        vertices=sum(len(ring) // 2 for polygon in polygons for ring in polygon),
        geometry=geometry,
    )


REGIONS = [
    _region("a", 1, (((0.0, 0.0, 4.0, 0.0, 4.0, 3.0),),)),
    # two parts, the first with a hole
    _region(
        "a",
        2,
        (
            ((0.0, 0.0, 9.0, 0.0, 9.0, 9.0), (2.0, 2.0, 3.0, 2.0, 3.0, 3.0)),
            ((20.0, 20.0, 21.0, 20.0, 21.0, 21.0),),
        ),
        "rle",
    ),
    _region("b", 1, ()),  # no polygon at all: RLE only
]
LINEAGE = {"a": "content-a:model:config", "b": "content-b:model:config"}


def test_the_regions_table_holds_every_field_of_every_region() -> None:
    table = regions_table(RegionColumns.of(REGIONS), NAMES, LINEAGE)
    assert table.schema == REGIONS_SCHEMA
    rows = table.to_pylist()
    assert [r["region_index"] for r in rows] == [0, 1, 0]  # numbered within each image
    assert [r["class_name"] for r in rows] == ["disc", "box", "disc"]
    for row, region in zip(rows, REGIONS, strict=True):
        assert row["polygons"] == [[list(ring) for ring in part] for part in region.polygons]
        for name in ("image_id", "class_id", "area", "rle", "geometry", "vertices"):
            assert row[name] == getattr(region, name)
        assert tuple(row["bbox"]) == region.bbox
        assert row["score"] == pytest.approx(region.score)
    assert RegionColumns.of(REGIONS).regions() == REGIONS  # and back, exactly


def test_region_ids_follow_image_lineage_and_position() -> None:
    ids = regions_table(RegionColumns.of(REGIONS), NAMES, LINEAGE).column("region_id").to_pylist()
    assert ids == [stable_id("a", LINEAGE["a"], "0"), stable_id("a", LINEAGE["a"], "1"),
                   stable_id("b", LINEAGE["b"], "0")]  # fmt: skip
    other = {**LINEAGE, "a": "content-a:another-model:config"}
    moved = regions_table(RegionColumns.of(REGIONS), NAMES, other).column("region_id").to_pylist()
    assert moved[:2] != ids[:2] and moved[2] == ids[2]  # only a's labels derive from it


def test_stable_ids_keep_their_parts_apart() -> None:
    assert stable_id("a", "bc") == stable_id("a", "bc")
    assert stable_id("a", "bc") != stable_id("ab", "c")
    assert len(stable_id("x")) == 16


def test_a_written_table_reads_back_equal_and_compressed(tmp_path: Path) -> None:
    images = images_table(
        [
            image_record("k1", "i1", "/in", (4, 6), 2),
            image_record("k2", "i2", "/in", None, 0, status="failed", error="bad"),
        ]
    )
    assert images.schema == IMAGES_SCHEMA
    uri = str(tmp_path / "images" / "shard.parquet")
    write_table(LocalStorage(), uri, images)
    data = Path(uri).read_bytes()
    assert pq.read_table(io.BytesIO(data)).equals(images)
    assert pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0).column(0).compression == "ZSTD"
    assert [p.name for p in (tmp_path / "images").iterdir()] == ["shard.parquet"]  # no temp left
