"""Whole-or-nothing file writes, shared by checkpoints here and by the pipeline's local storage."""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

_partial: set[Path] = set()  # temp files being written now, by any thread
_partial_lock = threading.Lock()


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` written whole or not at all (see ``open_atomic``)."""
    with open_atomic(path) as f:
        f.write(data)


@contextmanager
def open_atomic(path: Path) -> Iterator[BinaryIO]:
    """A file to write ``path`` through: a temp file in the same folder, fsynced and renamed
    over the target when the block ends, so a reader sees the old file or the new one, never
    half of one, and a block that raises leaves no temp file behind. Lets an export of any
    size be written piece by piece with the same guarantee as a single write.

    The temp file is created with mode 0o666 minus the umask, like any new file, so results
    are as readable as the user's other files (``mkstemp`` would make them owner-only).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    with _partial_lock:
        _partial.add(tmp)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        with _partial_lock:
            _partial.discard(tmp)


def remove_partial_files() -> None:
    """Delete the temp files of writes still under way: for a process about to end without
    unwinding (``os._exit``), so no ``.tmp`` file outlives it."""
    with _partial_lock:
        for tmp in _partial:
            tmp.unlink(missing_ok=True)
