"""Whole-or-nothing file writes, shared by checkpoints here and by the pipeline's local storage."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename over the target: a reader sees the old file
    or the new one, never half of one, and a failed write leaves no temp file behind.

    The temp file is created with mode 0o666 minus the umask, like any new file, so results
    are as readable as the user's other files (``mkstemp`` would make them owner-only).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
