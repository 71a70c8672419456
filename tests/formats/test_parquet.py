"""The parquet export against the class maps it was made from.

WKB is read back by a small decoder written here from the WKB layout (and by shapely when it
is installed), and compared with the records and with pycocotools' rasterization.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as mask_utils

import pipeline.formats.parquet as parquet_module
from pipeline.formats import ExportOptions, RunView, open_run
from pipeline.formats.parquet import export_parquet
from pipeline.geometry.policy import RegionPolicy
from pipeline.run.tables import REGIONS_SCHEMA
from tests.formats.sharded_run import write_sharded_run
from tests.helpers import rasterize
from tests.runs import write_run

EXACT = RegionPolicy(min_area=1, simplify_tolerance=0)
FAILED = {"zz-broken.jpg": "zz-broken.jpg: cannot identify image file"}


def class_maps() -> dict[str, np.ndarray]:
    """Non-square images with holes, several parts of one class, diagonal touches, 1-px lines."""
    rows, cols = np.mgrid[:48, :64]
    scene = np.zeros((48, 64), np.uint8)
    scene[(rows - 14) ** 2 + (cols - 15) ** 2 <= 81] = 1  # disc
    scene[4:14, 34:46] = 2  # box
    scene[30:44, 50:60] = 2  # another box
    scene[28:42, 4:18][np.tril(np.ones((14, 14), bool))] = 3  # triangle
    annulus = ((rows - 34) ** 2 + (cols - 34) ** 2 <= 64) & (
        (rows - 34) ** 2 + (cols - 34) ** 2 > 9
    )
    scene[annulus] = 4  # ring with a hole
    small = np.zeros((9, 13), np.uint8)
    small[2, 3] = 1  # one pixel
    small[5, 2:11] = 2  # a 1-px line
    small[0, 11] = small[1, 12] = 3  # two pixels touching at a corner
    return {"a-scene.png": scene, "b-small.png": small}


def exported(view: RunView, **options: Any) -> tuple[Any, Any]:
    uris = export_parquet(view, ExportOptions(**options))
    assert uris == (view.layout.export("regions.parquet"), view.layout.export("images.parquet"))
    return pq.read_table(uris[0]), pq.read_table(uris[1])


def read_wkb(data: bytes) -> list[list[np.ndarray]]:
    """Parts -> rings -> closed (n, 2) points, from little-endian ISO WKB MultiPolygon."""
    offset = 0

    def take(fmt: str) -> tuple[Any, ...]:
        nonlocal offset
        values = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return values

    order, kind, count = take("<BII")
    assert (order, kind) == (1, 6)
    parts = []
    for _ in range(count):
        order, kind, ring_count = take("<BII")
        assert (order, kind) == (1, 3)
        rings = []
        for _ in range(ring_count):
            (n,) = take("<I")
            points = np.array(take(f"<{2 * n}d")).reshape(n, 2)
            assert n >= 4 and (points[0] == points[-1]).all(), "WKB rings must be closed"
            rings.append(points)
        parts.append(rings)
    assert offset == len(data)
    return parts


def shoelace(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return abs(float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))) / 2


def flat_rings(parts: list[list[np.ndarray]]) -> list[list[list[float]]]:
    """Decoded parts as the records store them: flat x, y rings without the closing point."""
    return [[ring[:-1].ravel().tolist() for ring in rings] for rings in parts]


def rle_mask(counts: str, height: int, width: int) -> np.ndarray:
    rle = {"size": [height, width], "counts": counts.encode()}
    return np.asarray(mask_utils.decode(rle), bool)


def test_regions_round_trip_with_image_columns(tmp_path: Path) -> None:
    maps = class_maps()
    view = write_run(tmp_path / "run", maps, failed=FAILED)
    regions, _ = exported(view)
    assert regions.num_rows == view.regions.num_rows > 0
    assert regions.column_names == [
        *REGIONS_SCHEMA.names,
        "key",
        "uri",
        "width",
        "height",
        "model_version",
    ]
    assert regions.select(REGIONS_SCHEMA.names).equals(view.regions)
    assert b"geo" not in (regions.schema.metadata or {})
    images = {row["image_id"]: row for row in view.images.to_pylist()}
    for row in regions.to_pylist():
        image = images[row["image_id"]]
        assert row["key"] == image["key"] and row["key"] in maps
        assert (row["height"], row["width"]) == maps[row["key"]].shape
        assert (row["uri"], row["model_version"]) == (image["uri"], image["model_version"])


@pytest.mark.parametrize(("rows", "size"), [(20, 1 << 30), (1 << 30, 1)])
def test_row_groups_end_at_a_count_of_rows_or_of_bytes_and_read_back_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows: int, size: int
) -> None:
    """A row group holds whole shards in memory until written: bytes bound it as well as rows
    (a bound of 1 byte: each part with regions is a group of its own)."""
    write_sharded_run(tmp_path)
    view = open_run(str(tmp_path))
    whole, _ = exported(view)
    monkeypatch.setattr(parquet_module, "ROW_GROUP_ROWS", rows)
    monkeypatch.setattr(parquet_module, "ROW_GROUP_BYTES", size)
    monkeypatch.setattr(parquet_module, "IMAGE_GROUP_BYTES", size)
    whole_images = pq.read_table(view.layout.export("images.parquet"))
    cut, cut_images = exported(view)
    assert cut.equals(whole) and cut_images.equals(whole_images)
    found = pq.ParquetFile(view.layout.export("regions.parquet")).metadata
    groups = [found.row_group(i).num_rows for i in range(found.num_row_groups)]
    if size == 1:
        assert len(groups) == sum(1 for part in view.parts() if part.regions.num_rows)
        images = pq.ParquetFile(view.layout.export("images.parquet")).metadata
        assert images.num_row_groups == len(list(view.parts(regions=None)))
    else:
        assert len(groups) > 1 and min(groups[:-1]) >= rows
    assert sum(groups) == whole.num_rows


def test_images_keep_failed_rows_with_reasons(tmp_path: Path) -> None:
    view = write_run(tmp_path / "run", class_maps(), failed=FAILED)
    regions, images = exported(view)
    assert images.equals(view.images)
    failed = {r["key"]: r["error"] for r in images.to_pylist() if r["status"] == "failed"}
    assert failed == FAILED
    assert set(regions["key"].to_pylist()) == set(class_maps())


@pytest.mark.parametrize("instances", ["components", "semantic"])
def test_wkb_decodes_to_the_region_polygons_and_pixel_areas(tmp_path: Path, instances: str) -> None:
    policy = EXACT.model_copy(update={"instances": instances})
    view = write_run(tmp_path / "run", class_maps(), policy=policy)
    regions, _ = exported(view, wkb=True)
    assert regions.select(REGIONS_SCHEMA.names).equals(view.regions)
    rows = regions.to_pylist()
    assert {row["geometry"] for row in rows} == {"polygon"}
    assert any(len(polygon) > 1 for row in rows for polygon in row["polygons"])  # holes
    assert any(len(row["polygons"]) > 1 for row in rows) == (instances == "semantic")
    for row in rows:
        parts = read_wkb(row["wkb"])
        assert flat_rings(parts) == row["polygons"]
        area = sum(shoelace(ext) - sum(shoelace(hole) for hole in holes) for ext, *holes in parts)
        drawn = rasterize(row["polygons"], row["height"], row["width"])
        assert area == drawn.sum() == row["area"]
        assert (drawn == rle_mask(row["rle"], row["height"], row["width"])).all()


def test_rle_regions_get_their_mask_boundary(tmp_path: Path) -> None:
    """Where the gate rejected the polygons, the WKB still draws exactly the RLE mask."""
    policy = RegionPolicy(min_area=1, simplify_tolerance=2, min_fidelity=0.999)
    view = write_run(tmp_path / "run", class_maps(), policy=policy)
    regions, _ = exported(view, wkb=True)
    rows = regions.to_pylist()
    assert {row["geometry"] for row in rows} == {"polygon", "rle"}
    for row in rows:
        parts = flat_rings(read_wkb(row["wkb"]))
        mask = rle_mask(row["rle"], row["height"], row["width"])
        if row["geometry"] == "polygon":
            assert parts == row["polygons"]
        else:
            assert not (rasterize(row["polygons"], row["height"], row["width"]) == mask).all()
            assert (rasterize(parts, row["height"], row["width"]) == mask).all()


def test_geo_metadata(tmp_path: Path) -> None:
    maps = class_maps()
    view = write_run(tmp_path / "run", maps, policy=EXACT)
    uri = export_parquet(view, ExportOptions(wkb=True))[0]
    geo = json.loads(pq.read_schema(uri).metadata[b"geo"])
    assert geo["version"] == "1.1.0"
    column = geo["columns"][geo["primary_column"]]
    assert geo["primary_column"] == "wkb"
    assert column["encoding"] == "WKB"
    assert column["geometry_types"] == ["MultiPolygon"]
    assert "crs" in column and column["crs"] is None
    # Pixel-corner extent of all labeled pixels of all images.
    found = [np.nonzero(m) for m in maps.values()]
    ys, xs = np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])
    assert column["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    xmin, ymin, xmax, ymax = column["bbox"]
    for data in pq.read_table(uri)["wkb"].to_pylist():
        points = np.concatenate([ring for rings in read_wkb(data) for ring in rings])
        assert (points >= [xmin, ymin]).all() and (points <= [xmax, ymax]).all()


def test_no_regions_gives_empty_files_without_bbox(tmp_path: Path) -> None:
    view = write_run(tmp_path / "run", {"empty.png": np.zeros((5, 7), np.uint8)})
    regions, images = exported(view, wkb=True)
    assert regions.num_rows == 0 and images.num_rows == 1
    column = json.loads(regions.schema.metadata[b"geo"])["columns"]["wkb"]
    assert "bbox" not in column and column["crs"] is None


def test_wkb_reads_in_shapely(tmp_path: Path) -> None:
    shapely = pytest.importorskip("shapely")
    view = write_run(tmp_path / "run", class_maps(), policy=EXACT)
    regions, _ = exported(view, wkb=True)
    shapes = shapely.from_wkb(regions["wkb"].to_pylist())
    assert set(shapely.get_type_id(shapes).tolist()) == {6}  # MultiPolygon
    assert shapely.area(shapes).tolist() == regions["area"].to_pylist()
    bbox = json.loads(regions.schema.metadata[b"geo"])["columns"]["wkb"]["bbox"]
    assert shapely.total_bounds(shapes).tolist() == bbox
