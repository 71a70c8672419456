"""Progress events from the data path to whoever draws them (the CLI's bar, or nobody).

Shard code only reports; it never knows whether a terminal, a log or nothing is listening.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class ProgressListener(Protocol):
    def started(self, total_images: int) -> None: ...
    def advanced(self, images: int, failed: int) -> None: ...
    def shard_saved(self, images: int) -> None: ...  # written to the run folder: kept


_lock = threading.Lock()
_listeners: list[ProgressListener] = []


@contextmanager
def listening(listener: ProgressListener) -> Iterator[None]:
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)


def started(total_images: int) -> None:
    for listener in list(_listeners):
        listener.started(total_images)


def advanced(images: int, failed: int = 0) -> None:
    for listener in list(_listeners):
        listener.advanced(images, failed)


def shard_saved(images: int) -> None:
    for listener in list(_listeners):
        listener.shard_saved(images)
