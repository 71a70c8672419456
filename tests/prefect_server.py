"""A real Prefect server on loopback with a process work pool and two workers, for tests.

Each process gets its own PREFECT_HOME under a temporary folder; every process started here
is stopped when the fixture ends.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PREFECT = [sys.executable, "-m", "prefect"]
POOL = "prelabel-test-pool"


@dataclass
class PrefectStack:
    api_url: str
    pool: str
    env: dict[str, str]  # what a client process needs to talk to this server
    worker_logs: tuple[Path, ...]

    def cli(
        self, *args: str, timeout: float = 300, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``prelabel ARGS`` against this server, ``env`` added to its environment."""
        return subprocess.run(
            [sys.executable, "-c", "from flows.cli import app; app()", *args],
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            timeout=timeout,
            check=False,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_healthy(url: str, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"prefect server at {url} not healthy after {seconds} s")


@pytest.fixture(scope="session")
def prefect_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectStack]:
    root = tmp_path_factory.mktemp("prefect")
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    base = {
        **os.environ,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_API_URL": api_url,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
    }
    processes: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        server_env = {**base, "PREFECT_HOME": str(root / "server")}
        server_env.pop("PREFECT_API_URL")
        server_log = (root / "server.log").open("wb")
        server = subprocess.Popen(
            [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=server_env,
            stdout=server_log,
            stderr=subprocess.STDOUT,
        )
        processes.append(server)
        _wait_healthy(api_url, server, 120)
        client_env = {**base, "PREFECT_HOME": str(root / "client")}
        subprocess.run(
            [*PREFECT, "work-pool", "create", POOL, "--type", "process"],
            env=client_env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        for name in ("worker-a", "worker-b"):
            log = root / f"{name}.log"
            logs.append(log)
            processes.append(
                subprocess.Popen(
                    [
                        *PREFECT,
                        "worker",
                        "start",
                        "--pool",
                        POOL,
                        "--type",
                        "process",
                        "--limit",
                        "1",
                        "--name",
                        name,
                    ],
                    env={**base, "PREFECT_HOME": str(root / name)},
                    stdout=log.open("wb"),
                    stderr=subprocess.STDOUT,
                )
            )
        yield PrefectStack(api_url, POOL, client_env, tuple(logs))
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in reversed(processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
