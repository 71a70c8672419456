"""A truth masks folder's listing, kept in a temporary SQLite file rather than in memory.

A truth for a million images lists a million masks. Held as Python strings and dicts that
listing grew by about 280 bytes a mask (measured on 99,800), so an evaluation's memory grew
with its truth. Here every name, its URI where it is odd, its sha256 once read, and which
label (an image key from ``index.csv``, or a mask's stem) names which mask live in one
temporary database whose page cache is bounded: memory stays flat, and a lookup is an indexed
read of a few microseconds against milliseconds to score an image.

SQLite compares text by its UTF-8 bytes, which orders names as Python's ``sorted`` does, so a
name-ordered read is the order the digest has always used.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator

_CACHE_KIB = 8192  # the page cache: what the listing may hold in memory
_BATCH = 4096  # rows read at a time where a pass also writes
_UNUSED = "FROM labels WHERE label NOT IN (SELECT label FROM used)"
_UNUSED_LABELS = f"SELECT label {_UNUSED} ORDER BY label"
_UNUSED_NAMES = f"SELECT name {_UNUSED} ORDER BY name"


class TruthListing:
    """Names of the truth's files, with what is learnt about each as the evaluation goes."""

    def __init__(self) -> None:
        # "" is a private on-disk database that SQLite removes when the connection closes;
        # a flow may open the truth on one thread and score on another.
        self.db = sqlite3.connect("", isolation_level=None, check_same_thread=False)
        self.db.executescript(
            f"""
            PRAGMA journal_mode = OFF;
            PRAGMA synchronous = OFF;
            PRAGMA cache_size = -{_CACHE_KIB};
            PRAGMA temp_store = FILE;
            CREATE TABLE files (name TEXT PRIMARY KEY, uri BLOB, sha256 BLOB) WITHOUT ROWID;
            CREATE TABLE labels (label TEXT PRIMARY KEY, name TEXT NOT NULL) WITHOUT ROWID;
            """
        )

    def add_files(self, files: Iterable[tuple[str, str | None]]) -> None:
        """(name, its URI where the folder's prefix and the name do not spell it, else None)."""
        with self._transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO files (name, uri) VALUES (?, ?)",
                ((name, None if uri is None else _raw(uri)) for name, uri in files),
            )

    def add_labels(self, labels: Iterable[tuple[str, str]]) -> None:
        """(label, mask name); a label given twice keeps its last mask, as a dict would."""
        with self._transaction():
            self.db.executemany("INSERT OR REPLACE INTO labels VALUES (?, ?)", labels)

    def names(self) -> Iterator[str]:
        """Every file's name, in name order."""
        for (name,) in self.db.execute("SELECT name FROM files ORDER BY name"):
            yield name

    def has(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM files WHERE name = ?", (name,)).fetchone() is not None

    def uri(self, name: str, prefix: str) -> str | None:
        """Where to read ``name``: the URI kept for it, else ``prefix`` and the name; None
        where it is not listed."""
        row = self.db.execute("SELECT uri FROM files WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        return prefix + name if row[0] is None else _text(row[0])

    def odd_uris(self) -> dict[str, str]:
        """Name -> URI for the names kept with one; few, or none."""
        rows = self.db.execute("SELECT name, uri FROM files WHERE uri IS NOT NULL ORDER BY name")
        return {name: _text(uri) for name, uri in rows}

    def set_sha256(self, name: str, digest: bytes) -> None:
        self.db.execute("UPDATE files SET sha256 = ? WHERE name = ?", (digest, name))

    def unhashed(self) -> Iterator[str]:
        """Names not read yet, in name order; the caller may hash each as it goes."""
        after = ""
        while True:
            batch = [
                name
                for (name,) in self.db.execute(
                    "SELECT name FROM files WHERE sha256 IS NULL AND name > ? "
                    "ORDER BY name LIMIT ?",
                    (after, _BATCH),
                )
            ]
            yield from batch
            if len(batch) < _BATCH:
                return
            after = batch[-1]

    def hashes(self) -> Iterator[tuple[str, bytes | None]]:
        """(name, sha256) in name order."""
        yield from self.db.execute("SELECT name, sha256 FROM files ORDER BY name")

    def mask_of(self, label: str) -> str | None:
        row = self.db.execute("SELECT name FROM labels WHERE label = ?", (label,)).fetchone()
        return None if row is None else str(row[0])

    def unused(self, used: Iterable[str], *, by_name: bool) -> Iterator[str]:
        """Labels none of ``used`` is, or with ``by_name`` their masks' names, in that order.
        The used labels go to a table of their own: a million keys would not fit a query."""
        self.db.execute("DROP TABLE IF EXISTS temp.used")
        self.db.execute("CREATE TEMP TABLE used (label TEXT PRIMARY KEY) WITHOUT ROWID")
        with self._transaction():
            self.db.executemany("INSERT OR IGNORE INTO used VALUES (?)", ((k,) for k in used))
        for (value,) in self.db.execute(_UNUSED_NAMES if by_name else _UNUSED_LABELS):
            yield str(value)

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db)


class _Transaction:
    """Many writes in one transaction: one at a time, each would be its own."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN")

    def __exit__(self, kind: object, *_: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def _raw(uri: str) -> bytes:
    """A local URI may hold a file name's undecodable bytes as surrogates: kept exactly."""
    return uri.encode("utf-8", "surrogateescape")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")
