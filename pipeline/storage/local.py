"""Local folders as storage: listings of regular files, atomic writes, locked compares."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from deeplab.files import open_atomic, write_atomic
from pipeline.storage.base import NotFoundError, ObjectInfo, StorageError, printable

log = logging.getLogger(__name__)


class LocalStorage:
    """Files on a local or mounted file system; URIs are paths."""

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every regular file under ``prefix``, folder by folder with names sorted, skipping
        hidden files and folders; a ``prefix`` that is a file lists itself, by its name. FIFOs,
        sockets and devices are left out: reading one would block or never end. Keys are
        ``printable``; URIs keep the exact name to read by."""
        root = Path(prefix)
        if root.is_file():
            found = _regular(root, root.name)
            yield from [found] if found else []
            return
        if not root.is_dir():
            if not root.exists():
                raise NotFoundError(f"{printable(prefix)}: not a folder (it does not exist)")
            raise StorageError(f"{printable(prefix)}: not a folder")
        for folder, dirs, files in os.walk(root, onerror=_raise):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(f for f in files if not f.startswith(".")):
                path = Path(folder) / name
                found = _regular(path, PurePosixPath(*path.relative_to(root).parts).as_posix())
                if found:
                    yield found

    def read(self, uri: str) -> bytes:
        """Opened without blocking and checked to be a regular file before reading: a FIFO
        put where a file was listed is refused instead of waiting for a writer forever."""
        try:
            fd = os.open(uri, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise _local_error(uri, "cannot read", exc) from exc
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StorageError(f"{printable(uri)}: cannot read (not a regular file)")
            try:
                return file.read()
            except OSError as exc:
                raise _local_error(uri, "cannot read", exc) from exc

    def read_tail(self, uri: str, size: int) -> bytes:
        """The last ``size`` bytes (all of a shorter file): enough to check a file's trailer
        without reading the whole of it."""
        try:
            with Path(uri).open("rb") as file:
                file.seek(max(0, file.seek(0, os.SEEK_END) - size))
                return file.read()
        except OSError as exc:
            raise _local_error(uri, "cannot read", exc) from exc

    def read_versioned(self, uri: str) -> tuple[bytes, str]:
        """The content and a tag that changes with it (its digest), for ``write_if``."""
        data = self.read(uri)
        return data, hashlib.sha256(data).hexdigest()

    def write_atomic(self, uri: str, data: bytes) -> None:
        try:
            write_atomic(Path(uri), data)
        except OSError as exc:
            raise _local_error(uri, "cannot write", exc) from exc

    @contextmanager
    def write_stream(self, uri: str) -> Iterator[BinaryIO]:
        """A file to write piece by piece; it replaces ``uri`` whole when the block ends."""
        try:
            with open_atomic(Path(uri)) as file:
                yield file
        except OSError as exc:
            raise _local_error(uri, "cannot write", exc) from exc

    def write_if(self, uri: str, data: bytes, *, match: str | None) -> str | None:
        """Write only if the file is absent (``match`` None) or still has the tag ``match``,
        and return the new tag; None if another writer got there first. The check and the
        write happen under an exclusive lock on a hidden companion file, so two writers never
        both succeed, and the file is never missing in between."""
        try:
            with _exclusive(Path(uri)) as path:
                if _tag(path) != match:
                    return None
                write_atomic(path, data)
                return hashlib.sha256(data).hexdigest()
        except OSError as exc:
            raise _local_error(uri, "cannot write", exc) from exc

    def delete_if(self, uri: str, *, match: str) -> bool:
        """Remove the file if it still has the tag ``match``."""
        try:
            with _exclusive(Path(uri)) as path:
                if _tag(path) != match:
                    return False
                path.unlink()
                return True
        except OSError as exc:
            raise _local_error(uri, "cannot delete", exc) from exc

    def delete(self, uri: str) -> None:
        """Remove the file; one that is already gone is no error."""
        try:
            Path(uri).unlink(missing_ok=True)
        except OSError as exc:
            raise _local_error(uri, "cannot delete", exc) from exc

    def move(self, uri: str, to: str) -> None:
        try:
            Path(to).parent.mkdir(parents=True, exist_ok=True)
            Path(uri).replace(to)
        except OSError as exc:
            raise _local_error(uri, f"cannot move to {printable(to)}", exc) from exc

    def exists(self, uri: str) -> bool:
        return Path(uri).exists()

    def join(self, base: str, *parts: str) -> str:
        return str(Path(base).joinpath(*parts))

    def ensure_writable(self, prefix: str) -> None:
        """Create the folder if needed; fail now, not after the first shard's work."""
        path = Path(prefix)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"{printable(prefix)}: cannot create the output folder ({exc.strerror})"
            ) from exc
        if not os.access(path, os.W_OK):
            raise StorageError(f"{printable(prefix)}: output folder is not writable")


def _regular(path: Path, key: str) -> ObjectInfo | None:
    """``path`` listed under ``key``, or None (logged) when it is not a regular file."""
    try:
        info = path.stat()
    except OSError as exc:
        raise StorageError(f"{printable(str(path))}: cannot stat ({exc.strerror})") from exc
    if not stat.S_ISREG(info.st_mode):
        log.info("%s: not a regular file, left out", printable(str(path)))
        return None
    # Modification time and size, as make and rsync judge change without reading.
    etag = f"{info.st_mtime_ns:x}-{info.st_size:x}"
    return ObjectInfo(uri=str(path), key=printable(key), size=info.st_size, etag=etag)


@contextmanager
def _exclusive(path: Path) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``.NAME.lock`` beside ``path`` for the block: released by
    the kernel if the process dies, honoured across processes (and by NFS v4's lock manager).
    The lock file is removed when the block ends, so none is left in the folder; a process
    that was waiting on the removed file sees it is gone and locks the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if lock.stat().st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield path
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def _tag(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def _local_error(uri: str, what: str, exc: OSError) -> StorageError:
    """A file system error as a storage error naming the path and the system's reason: local
    faults (disk full, permission) do not pass by trying again."""
    message = f"{printable(uri)}: {what} ({exc.strerror or exc})"
    if isinstance(exc, FileNotFoundError):
        return NotFoundError(message)
    return StorageError(message)


def _raise(exc: OSError) -> None:
    raise StorageError(f"{printable(str(exc.filename))}: cannot list ({exc.strerror})") from exc
