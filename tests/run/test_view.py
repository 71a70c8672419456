"""The label map is checked before any export is written: a bad one fails by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.formats import ExportError, open_run
from tests.runs import write_run


def one_map() -> dict[str, np.ndarray]:
    class_map = np.zeros((10, 10), np.uint8)
    class_map[2:6, 2:6] = 1
    return {"a.png": class_map}


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (
            ("background", "car", "car"),
            r"class names are not unique: \['background', 'car', 'car'\]",
        ),
        (("background", " "), "class names must be non-empty"),
    ],
)
def test_bad_label_maps_are_refused(tmp_path: Path, names: tuple[str, ...], message: str) -> None:
    with pytest.raises(ExportError, match=message):
        write_run(tmp_path / "run", one_map(), class_names=names)


def test_a_folder_without_manifest_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="not a finished run folder"):
        open_run(str(tmp_path))
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(ExportError, match="not a prelabel run manifest"):
        open_run(str(tmp_path))


def _overwrite(folder: Path, column: str, value: int) -> None:
    """Set a column of a run's only shard table to one value, as a damaged file might."""
    path = next(folder.glob("*.parquet"))
    table = pq.read_table(path)
    field = table.schema.field(column)
    index = table.schema.get_field_index(column)
    pq.write_table(
        table.set_column(index, field, pa.array([value] * table.num_rows, field.type)), path
    )


def test_a_class_id_outside_the_names_is_refused(tmp_path: Path) -> None:
    write_run(tmp_path / "run", one_map())
    _overwrite(tmp_path / "run" / "records", "class_id", 5)
    with pytest.raises(ExportError, match="has class id 5, outside the 5 classes"):
        open_run(str(tmp_path / "run"))


def test_a_box_outside_its_image_is_refused(tmp_path: Path) -> None:
    write_run(tmp_path / "run", one_map())
    _overwrite(tmp_path / "run" / "images", "width", 4)
    with pytest.raises(ExportError, match=r"has box \[2, 2, 4, 4\] outside the 4x10 image"):
        open_run(str(tmp_path / "run"))
