"""A run folder inside the source folder: its files are left out of the listing to label."""

from __future__ import annotations

from pathlib import Path

from pipeline.labeling.annotate import inside_run
from pipeline.storage import LocalStorage


def _left_out(source: Path | str, out: Path | str) -> list[str]:
    inside = inside_run(str(source), str(out))
    return sorted(i.key for i in LocalStorage().list(str(source)) if inside(i))


def test_the_run_folder_in_the_source_is_left_out_however_it_is_named(tmp_path: Path) -> None:
    source = tmp_path / "images"
    (source / "run" / "exports").mkdir(parents=True)
    (source / "runs").mkdir()
    for name in ("a.png", "run/exports/m.png", "runs/b.png"):
        (source / name).write_bytes(b"x")
    (tmp_path / "link").symlink_to(source)
    assert _left_out(source, source / "run") == ["run/exports/m.png"]
    assert _left_out(source, tmp_path / "link" / "run") == ["run/exports/m.png"]  # a symlink
    assert _left_out(tmp_path / "link", source / "run") == ["run/exports/m.png"]
    assert _left_out(source, tmp_path / "elsewhere") == []
    assert _left_out(source, source) == ["a.png", "run/exports/m.png", "runs/b.png"]
