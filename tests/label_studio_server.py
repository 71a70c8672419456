"""A real Label Studio server on loopback, for the push/pull tests.

Register with ``pytest_plugins = ["tests.label_studio_server"]``. Label Studio pins older
numpy and opencv than this project, so it lives in a venv of its own under the user cache,
built once (about a minute from PyPI, 1 GB; an ``installed`` marker is written last, and a
venv without it is rebuilt). The server gets a temporary home and data dir, binds to
127.0.0.1 only, and is stopped when the session ends. A first start on a fresh data dir
runs the migrations: about 30 s.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

LABEL_STUDIO = "label-studio==1.23.2"
_STARTED = re.compile(rb"Starting development server at http://127\.0\.0\.1:(\d+)/")


@dataclass(frozen=True)
class LabelStudioServer:
    url: str
    token: str  # a legacy API token of the one user, as the client sends it
    venv_python: Path  # the venv's python: Label Studio's own SDK for reference decoding
    log: Path


def label_studio_venv() -> Path:
    """The venv's python; the venv is built first if it is not there."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    venv = cache / "prelabel-tests" / f"label-studio-{LABEL_STUDIO.split('==')[1]}-venv"
    python = venv / "bin" / "python"
    installed = venv / "installed"
    if installed.exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, LABEL_STUDIO], check=True)
    installed.touch()
    return python


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_started(log: Path, process: subprocess.Popen[bytes], seconds: float) -> str:
    """The URL from the start-up line: Label Studio moves to the next port if one is busy."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"label-studio exited with {process.returncode}; see {log}")
        found = _STARTED.search(log.read_bytes())
        if found:
            url = f"http://127.0.0.1:{int(found.group(1))}"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        return url
            except OSError:
                pass
        time.sleep(0.5)
    raise TimeoutError(f"label-studio not healthy after {seconds} s; see {log}")


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    python = label_studio_venv()
    root = tmp_path_factory.mktemp("label-studio")
    token = secrets.token_hex(20)  # the 40 characters of a legacy token
    env = {
        **os.environ,
        "HOME": str(root / "home"),
        "LABEL_STUDIO_BASE_DATA_DIR": str(root / "data"),
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        # Nothing leaves the machine: no version check, analytics or error reports.
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
    }
    for name in ("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_TOKEN"):
        env.pop(name, None)
    (root / "home").mkdir()
    log = root / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                *(str(python.parent / "label-studio"), "start", "--no-browser"),
                *("--internal-host", "127.0.0.1", "--port", str(_free_port())),
                *("--username", "reviewer@example.com", "--password", secrets.token_hex(8)),
                *("--user-token", token),
            ],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        url = _wait_started(log, process, 240)
        yield LabelStudioServer(url, token, python, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
