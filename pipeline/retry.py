"""What is worth trying again, and when: one policy for every step that touches storage, in
the CLI's checks, the plain ``annotate`` and the Prefect flow alike.

boto3 has already retried each S3 request (``S3Settings.max_attempts``) by the time an error
reaches a step; these tries are for what outlasts that: a store throttling for a while, a
connection dropped mid-listing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from pipeline.storage import StorageError

log = logging.getLogger(__name__)
T = TypeVar("T")

DELAYS = (2.0, 10.0)  # seconds before the second and the third try of a step


def is_transient(exc: BaseException) -> bool:
    """A throttled, dropped or timed-out call; not a refusal, a missing object, a full disk."""
    if isinstance(exc, StorageError):
        return exc.transient
    return isinstance(exc, (ConnectionError, TimeoutError))


def retrying(call: Callable[[], T]) -> T:
    """``call()``, tried again after each of ``DELAYS`` while it fails transiently."""
    for delay in (*DELAYS, None):
        try:
            return call()
        except Exception as exc:
            if delay is None or not is_transient(exc):
                raise
            log.warning("%s; trying again in %g s", exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable: the last try returns or raises")
