"""A temporary Prefect server for one command, started out of the terminal's reach.

Without ``PREFECT_API_URL`` a flow needs a server of its own. Prefect's built-in temporary
server runs in the terminal's process group, so Ctrl-C kills it while the run is still
reporting to it, and the run then retries against a dead server for minutes. This one runs in
its own session (Ctrl-C does not reach it), dies with the process that started it even on
``kill -9`` (Linux's parent-death signal), and is stopped when the command ends.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import PrelabelError

# Run in the new process before it becomes uvicorn: ask Linux for SIGTERM when the parent
# dies (prctl PR_SET_PDEATHSIG, kept across exec), and leave if the parent is already gone.
_LAUNCH = """
import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(1, signal.SIGTERM)
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.executable, [sys.executable, "-m", "uvicorn", *sys.argv[2:]])
"""


class ServerError(PrelabelError):
    """The temporary server did not come up."""


@contextmanager
def temporary_server(log: Path, *, startup_seconds: float) -> Iterator[None]:
    """Set ``PREFECT_API_URL`` to a fresh local server for the block, unless it is set."""
    if os.environ.get("PREFECT_API_URL"):
        yield
        return
    port = _free_port()
    uvicorn = ["--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1"]
    uvicorn += ["--port", str(port), "--log-level", "error", "--lifespan", "on"]
    with log.open("ab") as output:
        server = subprocess.Popen(  # noqa: S603  (this interpreter, fixed arguments)
            [sys.executable, "-c", _LAUNCH, str(os.getpid()), *uvicorn],
            env={
                **os.environ,
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",  # no UI, no background services
                "PREFECT__SERVER_FINAL": "1",
            },
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/api"
    try:
        _wait_healthy(url, server, startup_seconds, log)
        os.environ["PREFECT_API_URL"] = url
        yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def drain_to_server() -> None:
    """Send what Prefect still holds for the server (log lines, events) while it is up: its
    own drain at exit would find the server stopped and retry for a minute."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=5)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_healthy(url: str, server: subprocess.Popen[bytes], seconds: float, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise ServerError(f"the local Prefect server exited ({server.returncode}); see {log}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise ServerError(f"the local Prefect server did not start in {seconds:g} s; see {log}")
