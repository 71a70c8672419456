"""Ctrl-C and SIGTERM as one clean stop: what ``docker stop``, Kubernetes and Prefect workers
send is handled like the key a person presses.

The first signal raises ``Interrupted`` in the main thread, so the run unwinds through its
``finally`` blocks: temp files are removed, the lease is given back. A second signal, or an
unwinding that takes longer than ``grace`` seconds (a read stuck in the kernel cannot be
called off), ends the process at once; shard files are whole or absent either way, so a rerun
resumes.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from deeplab.files import remove_partial_files

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was asked to stop; ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


@contextmanager
def interruptible(*, grace: float = 10.0) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise ``Interrupted`` in the main thread."""
    received: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        if received:  # asked twice: do not wait for the unwinding
            _exit_now(128 + signum)
        received.append(signum)
        timer = threading.Timer(grace, _exit_now, (128 + signum,))
        timer.daemon = True
        timer.start()
        raise Interrupted(signum)

    previous = {s: signal.signal(s, stop) for s in _SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _exit_now(code: int) -> None:
    remove_partial_files()
    sys.stderr.write("prelabel: stopped; shards not yet written are labeled again on rerun\n")
    sys.stderr.flush()
    os._exit(code)
