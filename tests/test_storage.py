"""Local storage: listing order and filtering, atomic writes, errors that name the path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.storage import LocalStorage, StorageError, storage_for


def test_listing_is_sorted_recursive_and_skips_hidden(tmp_path: Path) -> None:
    for name in ["b.jpg", "a/c.png", "a/.d.jpg", ".hidden/e.jpg", "a/z/f.JPG", "é ü.jpg"]:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * len(name))
    listed = list(LocalStorage().list(str(tmp_path)))
    assert [o.key for o in listed] == ["b.jpg", "é ü.jpg", "a/c.png", "a/z/f.JPG"]
    assert all(Path(o.uri).is_file() and o.size == len(o.key) for o in listed)


def test_listing_a_missing_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="not a folder"):
        list(LocalStorage().list(str(tmp_path / "missing")))


def test_write_atomic_replaces_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    storage = LocalStorage()
    target = str(tmp_path / "out" / "x.bin")
    storage.write_atomic(target, b"first")
    storage.write_atomic(target, b"second")
    assert Path(target).read_bytes() == b"second"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["x.bin"]


def test_failed_write_leaves_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage()
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")

    def disk_gone(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", disk_gone)
    with pytest.raises(OSError, match="Input/output error"):
        storage.write_atomic(str(target), b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_ensure_writable_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    blocker = tmp_path / "run"
    blocker.write_text("a file, not a folder")
    with pytest.raises(StorageError, match="cannot create the output folder"):
        LocalStorage().ensure_writable(str(blocker / "sub"))


def test_unknown_schemes_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unsupported storage scheme 'gs'"):
        storage_for("gs://bucket/images")


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        LocalStorage().write_atomic(str(tmp_path / "x.bin"), b"data")
    finally:
        os.umask(old)
    assert (tmp_path / "x.bin").stat().st_mode & 0o777 == 0o644
