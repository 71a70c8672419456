"""Test-only, on PYTHONPATH of a process a test starts: each local image read takes
SLOW_READ_SECONDS longer, so that the run is still at work when the test needs it to be."""

import os
import time

_DELAY = float(os.environ.get("SLOW_READ_SECONDS", "0"))

if _DELAY:
    from pipeline.storage import LocalStorage

    _read = LocalStorage.read

    def _slow(self: LocalStorage, uri: str) -> bytes:
        if uri.endswith(".png"):
            time.sleep(_DELAY)
        return _read(self, uri)

    LocalStorage.read = _slow  # type: ignore[method-assign]
