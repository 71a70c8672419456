"""The run folder's lease: one writer at a time, on local folders and S3, taken over only when
its holder is gone; two real processes contending for one --out."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pipeline.run.lease import LeaseHeldError, LeaseInfo, LeaseLostError, holding, verify
from pipeline.storage import LocalStorage, Storage
from pipeline.storage.s3 import S3Storage
from tests.helpers import assert_same_labels, make_images, slow_reads

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.s3_server import FaultProxy, S3Endpoint

pytest_plugins = ["tests.s3_server"]


def _foreign(uri: str, storage: Storage, *, host: str, pid: int, silent_for: float) -> None:
    """A lease written by another run, last renewed ``silent_for`` seconds ago."""
    renewed = datetime.now(UTC) - timedelta(seconds=silent_for)
    info = LeaseInfo(token="other", host=host, pid=pid, started_at=renewed, renewed_at=renewed)
    storage.write_atomic(uri, info.model_dump_json().encode())


def _holder(uri: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(Path(uri).read_text())
    return data


def test_a_live_holder_is_named_and_its_lease_left_alone(tmp_path: Path) -> None:
    uri = str(tmp_path / "run" / "lease.json")
    _foreign(uri, LocalStorage(), host="gpu-7", pid=4242, silent_for=5)
    with pytest.raises(LeaseHeldError) as refused, holding(LocalStorage(), uri, timeout=60):
        pass
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'run'} is being written by gpu-7 pid 4242, started ")
    assert _holder(uri)["token"] == "other"


def test_a_silent_holder_is_taken_over_after_the_timeout(tmp_path: Path) -> None:
    uri = str(tmp_path / "lease.json")
    _foreign(uri, LocalStorage(), host="gpu-7", pid=4242, silent_for=30)
    with pytest.raises(LeaseHeldError), holding(LocalStorage(), uri, timeout=60):
        pass
    with holding(LocalStorage(), uri, timeout=20) as lease:
        assert _holder(uri)["token"] == lease.token != "other"
    assert not Path(uri).exists()  # given back at the end


def test_a_holder_of_this_host_whose_process_is_gone_is_taken_over_at_once(
    tmp_path: Path,
) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    uri = str(tmp_path / "lease.json")
    _foreign(uri, LocalStorage(), host=socket.gethostname(), pid=int(gone.stdout), silent_for=1)
    with holding(LocalStorage(), uri, timeout=600) as lease:
        assert _holder(uri)["token"] == lease.token
    _foreign(uri, LocalStorage(), host=socket.gethostname(), pid=os.getppid(), silent_for=1)
    with pytest.raises(LeaseHeldError), holding(LocalStorage(), uri, timeout=600):
        pass  # the same host, but a live process


def test_the_holder_renews_and_notices_a_takeover(tmp_path: Path) -> None:
    storage, uri = LocalStorage(), str(tmp_path / "lease.json")
    with holding(storage, uri, timeout=0.4) as lease:
        first = _holder(uri)["renewed_at"]
        time.sleep(0.5)
        assert _holder(uri)["renewed_at"] != first  # renewed by the background thread
        verify(storage, uri, lease.token)
        _foreign(uri, storage, host="gpu-7", pid=1, silent_for=0)  # taken over meanwhile
        with pytest.raises(LeaseLostError, match="now held by gpu-7 pid 1"):
            verify(storage, uri, lease.token)
        time.sleep(0.3)
        assert lease.lost is not None
    assert _holder(uri)["token"] == "other"  # the new holder's lease stays


def test_holding_is_shared_within_a_process(tmp_path: Path) -> None:
    storage, uri = LocalStorage(), str(tmp_path / "lease.json")
    with holding(storage, uri, timeout=60) as outer:
        with holding(storage, uri, timeout=60) as inner:
            assert inner is outer
        assert Path(uri).exists()  # the outer holder still has it
    assert not Path(uri).exists()


_CONTEND = """
import sys, time
from pipeline.run.lease import LeaseHeldError, holding
from pipeline.storage import storage_for
uri, start = sys.argv[1], float(sys.argv[2])
storage = storage_for(uri)
time.sleep(max(0.0, start - time.time()))
try:
    with holding(storage, uri, timeout=60):
        print("won", flush=True)
        time.sleep(3)  # the others must find a live holder
except LeaseHeldError as exc:
    print("refused", exc, flush=True)
"""


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_of_many_processes_started_together_exactly_one_gets_the_lease(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "s3":
        endpoint: S3Endpoint = request.getfixturevalue("s3_endpoint")
        uri = f"s3://{endpoint.bucket()}/runs/x/lease.json"
    else:
        uri = str(tmp_path / "run" / "lease.json")
    start = time.time() + 4  # after every interpreter has started
    contenders = [
        subprocess.Popen(
            [sys.executable, "-c", _CONTEND, uri, str(start)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]
    said = [c.communicate(timeout=120)[0].split()[0] for c in contenders]
    assert sorted(said) == ["refused"] * 5 + ["won"]


def test_on_s3_a_lost_reply_does_not_lose_the_lease(
    s3_endpoint: S3Endpoint,
    fault_proxy: Callable[..., FaultProxy],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every conditional PUT's reply is dropped once: the write landed, the retry is refused
    (412), and the holder must still know the lease is its own."""
    bucket = s3_endpoint.bucket()
    proxy = fault_proxy(fail_share=1.0, delay_share=0, max_streak=1, statuses=(500,), after=1.0)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
    uri = f"s3://{bucket}/runs/x/lease.json"
    with holding(S3Storage(), uri, timeout=0.8) as lease:
        time.sleep(0.5)  # a renewal through the same faults
        verify(S3Storage(), uri, lease.token)
        assert lease.lost is None
    assert proxy.failed > 2
    assert s3_endpoint.keys(bucket) == []


# -- two real runs on one --out --------------------------------------------------------------


def _annotate(source: Path, out: Path, *extra: str, slow: bool = False) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRELABEL_", "PREFECT_API"))}
    env |= {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "200"}
    if slow:
        env |= slow_reads(0.5)
        extra = (*extra, "--workers", "1")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flows",
            "annotate",
            str(source),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--shard-size",
            "4",
            "--batch-size",
            "2",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


@pytest.mark.slow
@pytest.mark.integration
def test_two_runs_on_one_folder_one_writes_the_other_is_refused_then_takes_over(
    tmp_path: Path,
) -> None:
    source = tmp_path / "in"
    make_images(source, 24, seed=11, size=(120, 160))
    clean = tmp_path / "clean"
    finished = _annotate(source, clean)
    assert finished.wait(timeout=300) == 0, finished.communicate()[1]

    out = tmp_path / "run"
    writer = _annotate(source, out, slow=True)
    deadline = time.monotonic() + 120
    while not (out / "images").exists():  # the writer holds the lease and has a shard down
        assert writer.poll() is None, writer.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    started = time.monotonic()
    second = _annotate(source, out, "--min-area", "64")  # other settings: would clobber
    _, stderr = second.communicate(timeout=120)
    assert second.returncode == 2, stderr
    assert "Traceback" not in stderr
    line = stderr.strip().splitlines()
    assert len(line) == 1 and f"{out} is being written by {socket.gethostname()} pid " in line[0]
    assert f"pid {writer.pid}," in line[0]
    refused_after = time.monotonic() - started
    assert writer.poll() is None  # refused while the writer was still at work

    os.killpg(writer.pid, signal.SIGKILL)  # the writer dies holding the lease
    writer.communicate()
    assert json.loads((out / "lease.json").read_text())["pid"] == writer.pid
    resumed = _annotate(source, out)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert "taking over the run folder's lease" in stderr
    assert not (out / "lease.json").exists()
    assert_same_labels(out, clean)
    print(f"second run refused in {refused_after:.1f} s")
