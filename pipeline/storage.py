"""Where images come from and runs go: one small interface per URI scheme.

Writes are atomic everywhere: a reader sees a whole file or none, never a half-written one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol

from deeplab.files import write_atomic
from pipeline.errors import PrelabelError

if TYPE_CHECKING:
    from pipeline.s3 import S3Settings


class StorageError(PrelabelError, OSError):
    """A read, write or listing that failed; the message names the URI. ``transient``: the
    same call may succeed if tried again (a throttled or dropped request), as opposed to a
    refusal (access denied, no such bucket) or a local fault (disk full)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class NotFoundError(StorageError):
    """The object or folder is not there: the one storage error that means "nothing yet"."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    uri: str  # absolute: what ``read`` takes
    key: str  # relative to the listed prefix, '/'-separated: what people recognise
    size: int
    etag: str  # changes when the object does: S3's ETag; mtime and size for local files


class Storage(Protocol):
    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...
    def read(self, uri: str) -> bytes: ...
    def write_atomic(self, uri: str, data: bytes) -> None: ...
    def exists(self, uri: str) -> bool: ...
    def join(self, base: str, *parts: str) -> str: ...
    def ensure_writable(self, prefix: str) -> None: ...


class LocalStorage:
    """Files on a local or mounted file system; URIs are paths."""

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every file under ``prefix``, folder by folder with names sorted, skipping hidden files
        and folders."""
        root = Path(prefix)
        if not root.is_dir():
            raise StorageError(f"{prefix}: not a folder")
        for folder, dirs, files in os.walk(root, onerror=_raise):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(f for f in files if not f.startswith(".")):
                path = Path(folder) / name
                try:
                    stat = path.stat()
                except OSError as exc:
                    raise StorageError(f"{path}: cannot stat ({exc.strerror})") from exc
                key = PurePosixPath(*path.relative_to(root).parts).as_posix()
                # Modification time and size, as make and rsync judge change without reading.
                etag = f"{stat.st_mtime_ns:x}-{stat.st_size:x}"
                yield ObjectInfo(uri=str(path), key=key, size=stat.st_size, etag=etag)

    def read(self, uri: str) -> bytes:
        try:
            return Path(uri).read_bytes()
        except OSError as exc:
            raise StorageError(f"{uri}: cannot read ({exc.strerror})") from exc

    def write_atomic(self, uri: str, data: bytes) -> None:
        write_atomic(Path(uri), data)

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
                f"{prefix}: cannot create the output folder ({exc.strerror})"
            ) from exc
        if not os.access(path, os.W_OK):
            raise StorageError(f"{prefix}: output folder is not writable")


def _raise(exc: OSError) -> None:
    raise StorageError(f"{exc.filename}: cannot list ({exc.strerror})") from exc


class StorageConfig(Protocol):
    """What a storage takes from a run's config (``RunConfig`` has both)."""

    @property
    def s3(self) -> S3Settings: ...
    @property
    def workers(self) -> int: ...  # reader threads: the S3 connection pool is sized to them


def storage_for(uri: str, config: StorageConfig | None = None) -> Storage:
    """The storage that serves ``uri``'s scheme; without a config, S3 takes its defaults and
    whatever boto3 finds in the environment."""
    if "://" not in uri:
        return LocalStorage()
    scheme = uri.split("://", 1)[0]
    if scheme == "s3":
        from pipeline.s3 import S3Storage  # boto3 loads only when a run touches S3

        if config is None:
            return S3Storage()
        return S3Storage(config.s3, threads=config.workers)
    raise ValueError(f"{uri}: unsupported storage scheme {scheme!r}; give a local folder or s3://")
