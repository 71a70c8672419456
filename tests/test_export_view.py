"""The label map is checked before any export is written: a bad one fails by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.exporters import ExportError, open_run
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
