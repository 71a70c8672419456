"""Local storage: listing order and filtering, atomic writes, errors that name the path."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pipeline.storage import LocalStorage, NotFoundError, StorageError, storage_for


def test_listing_is_sorted_recursive_and_skips_hidden(tmp_path: Path) -> None:
    for name in ["b.jpg", "a/c.png", "a/.d.jpg", ".hidden/e.jpg", "a/z/f.JPG", "é ü.jpg"]:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * len(name))
    listed = list(LocalStorage().list(str(tmp_path)))
    assert [o.key for o in listed] == ["b.jpg", "é ü.jpg", "a/c.png", "a/z/f.JPG"]
    assert all(Path(o.uri).is_file() and o.size == len(o.key) for o in listed)


def test_a_file_given_as_the_prefix_lists_itself_by_name(tmp_path: Path) -> None:
    """One image is a source too: ``prelabel annotate photo.jpg``."""
    (tmp_path / "sub").mkdir()
    photo = tmp_path / "sub" / "photo.jpg"
    photo.write_bytes(b"x" * 5)
    (listed,) = LocalStorage().list(str(photo))
    assert (listed.key, listed.uri, listed.size) == ("photo.jpg", str(photo), 5)
    (in_folder,) = LocalStorage().list(str(tmp_path))
    assert listed.etag == in_folder.etag  # the same change token either way


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
    with pytest.raises(StorageError, match="unsupported storage scheme 'gs'"):
        storage_for("gs://bucket/images")


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        LocalStorage().write_atomic(str(tmp_path / "x.bin"), b"data")
    finally:
        os.umask(old)
    assert (tmp_path / "x.bin").stat().st_mode & 0o777 == 0o644


def test_a_full_disk_is_a_storage_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    target = tmp_path / "x.bin"
    with pytest.raises(
        StorageError, match=f"^{target}: cannot write \\(No space left on device\\)$"
    ) as err:
        LocalStorage().write_atomic(str(target), b"new")
    assert not err.value.transient  # a full disk is not worth trying again at once
    assert list(tmp_path.iterdir()) == []


def test_conditional_writes_let_one_writer_through(tmp_path: Path) -> None:
    storage, uri = LocalStorage(), str(tmp_path / "sub" / "lease.json")
    first = storage.write_if(uri, b"a", match=None)
    assert first is not None and storage.read_versioned(uri) == (b"a", first)
    assert storage.write_if(uri, b"b", match=None) is None  # taken
    assert storage.write_if(uri, b"b", match="stale") is None  # changed since it was read
    second = storage.write_if(uri, b"b", match=first)
    assert second is not None and Path(uri).read_bytes() == b"b"
    assert not storage.delete_if(uri, match=first)
    assert storage.delete_if(uri, match=second) and not Path(uri).exists()
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == []  # no lock file left


def test_a_fifo_is_not_listed_and_reading_one_fails_at_once(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    os.mkfifo(tmp_path / "x.jpg")
    assert [o.key for o in LocalStorage().list(str(tmp_path))] == ["a.jpg"]
    with pytest.raises(StorageError, match=re.escape("x.jpg: cannot read (not a regular file)")):
        LocalStorage().read(str(tmp_path / "x.jpg"))  # no writer: an open() would block


def test_only_a_missing_folder_lists_as_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        list(LocalStorage().list(str(tmp_path / "missing")))
    os.mkfifo(tmp_path / "fifo")  # there, but neither a folder nor a file to list
    with pytest.raises(StorageError) as err:
        list(LocalStorage().list(str(tmp_path / "fifo")))
    assert not isinstance(err.value, NotFoundError)
