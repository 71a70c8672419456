"""What every storage is: the interface per URI scheme, what a listing yields, the errors.

Writes are atomic everywhere: a reader sees a whole file or none, never a half-written one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from pipeline.errors import PrelabelError

if TYPE_CHECKING:
    from pipeline.storage.s3_settings import S3Settings


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
    def read_tail(self, uri: str, size: int) -> bytes: ...
    def read_versioned(self, uri: str) -> tuple[bytes, str]: ...
    def write_atomic(self, uri: str, data: bytes) -> None: ...
    def write_stream(self, uri: str) -> AbstractContextManager[BinaryIO]: ...
    def write_if(self, uri: str, data: bytes, *, match: str | None) -> str | None: ...
    def delete_if(self, uri: str, *, match: str) -> bool: ...
    def delete(self, uri: str) -> None: ...
    def move(self, uri: str, to: str) -> None: ...
    def exists(self, uri: str) -> bool: ...
    def join(self, base: str, *parts: str) -> str: ...
    def ensure_writable(self, prefix: str) -> None: ...


def printable(text: str) -> str:
    """``text`` with the bytes of a file name that are not UTF-8 (carried by Python as lone
    surrogates) written as ``\\xNN``: what a table, a log line or a terminal can hold. Names
    that are valid UTF-8 come back unchanged."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_uri(location: str) -> bool:
    """An object store's URI (``s3://bucket/key``), as opposed to a local path."""
    return "://" in location


def scheme_of(location: str) -> str:
    """``s3`` for ``s3://...``; empty for a local path."""
    return location.split("://", 1)[0] if is_uri(location) else ""


def absolute(location: str) -> str:
    """A local path made absolute, so a worker in another directory reads the same files;
    a URI as it is."""
    return location if is_uri(location) else str(Path(location).expanduser().absolute())


class StorageConfig(Protocol):
    """What a storage takes from a run's config (``RunConfig`` has both)."""

    @property
    def s3(self) -> S3Settings: ...
    @property
    def workers(self) -> int: ...  # reader threads: the S3 connection pool is sized to them
