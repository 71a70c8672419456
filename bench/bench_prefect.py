"""Prefect's cost: the same images through the annotate flow and through the plain function.

    python bench/bench_prefect.py [--images 2000] [--size 48] [--shard-size 256] [--repeats 3]
        [--shards N] [--workers N [--database sqlite|postgres] [--run-images N]]

Writes ``--images`` generated scenes of ``--size`` px square (small, so the model is cheap and
the orchestration is what shows), then times, in this one process and on the same images with
the bundled demo model:
  1. ``pipeline.labeling.annotate.annotate`` (no Prefect),
  2. ``flows.annotate.annotate_flow`` on the ephemeral Prefect server (one task per shard,
     artifacts), after a warm-up flow has started the server (its start, printed separately,
     is paid once per process, not per run),
alternating the two ``--repeats`` times, and prints the median wall times and the overhead
ratio (flow / plain; target <= 1.05), the overhead per shard in ms ((flow - plain) / shards),
the peak RSS of this process (where the parent flow runs) and of the Prefect server, and the
CPU seconds the server spent during the flow runs (on a 2-core machine that is time taken from
the labeling).

``--shards N``: N tiny shards, one image of 16 px each (``--images N --shard-size 1 --size 16``
unless those are given): nothing but orchestration per shard.

``--workers N``: the scale-out path instead of the ephemeral server. The bench starts a real
server (``prefect server start``, its own PREFECT_HOME; SQLite, or ``--database postgres``: a
throwaway PostgreSQL 15 cluster, which needs the server binaries and root), a process work
pool with the shard deployment (``flows.deploy.deploy``) and N ``prefect worker start --type
process --limit 1`` workers, and times ``annotate_flow(config, executor="deployment")``: the
parent flow runs here; consecutive shards of fewer than ``--run-images`` images in all
(``RunConfig.run_images``, 256 by default) share a flow run, which a worker starts in a fresh
process. A warm-up deployment run of two shards runs first. Peak RSS is also given for the
workers (each with the flow runs it started).

``--submit-only``: the parent's side of the scale-out path at full scale, without the minutes
a process worker spends per shard run (a fresh interpreter, torch, the model): on a real server
with the shard deployment and no worker, a parent flow submits every shard at once (as the
flow did before it kept at most ``IN_FLIGHT`` runs submitted), each as ``_run_on_deployment``
does (``run_deployment``, ``timeout=0``, the idempotency key), then polls all these pending
runs once, as the flow used to (a ``read_flow_run`` per run) and as it does (``_ended``: a
page of ids per read). Prints the submission time per shard, the time and
server CPU of each poll, and the server's RSS before, after the submissions and at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from PIL import Image

from deeplab.scenes import scenes
from pipeline.config import RunConfig
from pipeline.labeling.annotate import annotate

PREFECT = [sys.executable, "-m", "prefect"]
POOL = "bench-prefect-pool"
MIB = 1024 * 1024
PHASES = ("start", "plain", "flow", "end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=None, help="default 2000")
    parser.add_argument("--size", type=int, default=None, help="default 48")
    parser.add_argument("--shard-size", type=int, default=None, help="default 256")
    parser.add_argument("--shards", type=int, default=None, help="N tiny shards (see above)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="real server, N process workers")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--submit-only", action="store_true", help="see above")
    parser.add_argument("--run-images", type=int, help="images per flow run on the pool, at least")
    args = parser.parse_args()
    tiny = args.shards is not None
    images = args.images if args.images is not None else (args.shards if tiny else 2000)
    size = args.size if args.size is not None else (16 if tiny else 48)
    shard_size = args.shard_size if args.shard_size is not None else (1 if tiny else 256)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        source = root / "images"
        source.mkdir()
        for i, scene in enumerate(scenes(1, images, height=size, width=size)):
            Image.fromarray(scene.image).save(source / f"{i:05d}.png")

        def config(name: str, folder: Path = source) -> RunConfig:
            return RunConfig(
                source=str(folder),
                out=str(root / name),
                device=args.device,
                shard_size=shard_size,
                **({} if args.run_images is None else {"run_images": args.run_images}),
            )

        if args.submit_only:
            _submit_only(root, config("submitted"), args.database)
            return
        annotate(config("warm-up"))  # model load and first-call costs, paid by neither side

        # Prefect reads its settings once, at import: a real server's URL is set before.
        stack_ = _Stack(root, args.workers, args.database) if args.workers else None
        if stack_ is not None:
            stack.callback(stack_.stop)
            stack_.start()
        from prefect import flow

        from flows.annotate import Executor, annotate_flow

        start = time.perf_counter()
        if stack_ is None:
            flow(name="warm-up")(lambda: None)()
        else:
            stack_.deploy(config("deployed"))
            warm = root / "warm-up-images"
            warm.mkdir()
            for image in sorted(source.iterdir())[:2]:
                shutil.copy(image, warm)
            annotate_flow(
                config("warm-up-flow", warm).model_copy(update={"shard_size": 1}), "deployment"
            )
        server_start = time.perf_counter() - start
        executor: Executor = "local" if stack_ is None else "deployment"
        server = stack_.server_pids if stack_ is not None else _ephemeral_server
        sampler = _Sampler({"server": server, "this process": lambda: [os.getpid()]})
        sampler.alone.add("this process")  # not its children: the server and workers are
        if stack_ is not None:
            for n, worker in enumerate(stack_.workers):
                sampler.groups[f"worker {n + 1}"] = partial(list, [worker.pid])
            if stack_.postgres is not None:
                sampler.groups["postgres"] = stack_.postgres_pids
        stack.enter_context(sampler.running())

        plain_times, flow_times, server_cpu, idle_cpu = [], [], [], []
        for n in range(args.repeats):  # alternated, so drift on a shared machine hits both
            sampler.phase = "plain"
            cpu = _cpu_seconds(_descendants(server()))
            start = time.perf_counter()
            plain = annotate(config(f"plain-{n}"))
            plain_times.append(time.perf_counter() - start)
            idle_cpu.append(_cpu_seconds(_descendants(server())) - cpu)
            cpu += idle_cpu[-1]
            sampler.phase = "flow"
            start = time.perf_counter()
            flowed = annotate_flow(config(f"flow-{n}"), executor)
            flow_times.append(time.perf_counter() - start)
            sampler.phase = "end"
            server_cpu.append(_cpu_seconds(_descendants(server())) - cpu)
            assert plain.labeled == flowed.labeled == images
        sampler.stop()

    plain_s, flow_s = statistics.median(plain_times), statistics.median(flow_times)
    shards = -(-images // shard_size)
    run_images = args.run_images or RunConfig.model_fields["run_images"].default
    flow_runs = -(-shards // -(-run_images // shard_size))  # as flows.annotate._waves cuts them
    import torch

    where = (
        "the ephemeral Prefect server, one task per shard (tiny ones share tasks)"
        if stack_ is None
        else f"a real Prefect server ({args.database}) and {args.workers} process workers, "
        f"{flow_runs} flow runs (run_images {run_images})"
    )
    print(
        f"{images} images {size}x{size}, {shards} shards of {shard_size}, demo model on "
        f"{args.device}, {os.cpu_count()} cores, cpu capability "
        f"{torch.backends.cpu.get_cpu_capability()}; flow on {where}; median of "
        f"{args.repeats} alternated runs"
    )
    print(
        ("ephemeral server start (once per process)" if stack_ is None else "warm-up flow run")
        + f": {server_start:.1f} s"
    )
    print(f"{'path':<22} {'wall s':>8} {'img/s':>8}  each run, s")
    for name, median, each in (
        ("plain function", plain_s, plain_times),
        ("Prefect flow", flow_s, flow_times),
    ):
        runs = " ".join(f"{t:.2f}" for t in each)
        print(f"{name:<22} {median:>8.2f} {images / median:>8.1f}  {runs}")
    print(f"overhead ratio flow / plain: {flow_s / plain_s:.3f} (target <= 1.05)")
    print(f"overhead per shard: {1000 * (flow_s - plain_s) / shards:.1f} ms")
    print(
        "server CPU during the flow runs: "
        + ", ".join(f"{s:.1f} s" for s in server_cpu)
        + f" ({1000 * statistics.median(server_cpu) / shards:.1f} ms per shard); "
        "idle, during the plain runs: " + ", ".join(f"{s:.1f} s" for s in idle_cpu)
    )
    print(f"{'RSS MiB':<14}" + "".join(f"{phase:>8}" for phase in (*PHASES, "VmHWM")))
    for name in sampler.groups:
        peaks = [sampler.peak[phase].get(name, 0) / MIB for phase in PHASES]
        hwm = sampler.hwm.get(name, 0) / MIB
        print(f"{name:<14}" + "".join(f"{mib:>8.0f}" for mib in (*peaks, hwm)))
    print(
        "(the summed RSS of a group's processes: a server or worker with its child processes, "
        "this process alone; at the start, peak while plain / flow runs ran, at the end; "
        "sampled every 0.2 s. VmHWM: the largest of its processes' own peaks)"
    )


def _submit_only(root: Path, config: RunConfig, database: str) -> None:
    stack = _Stack(root, 0, database)
    try:
        stack.start()
        stack.deploy(config)
        _submit_and_poll(config, stack)
    finally:
        stack.stop()


def _submit_and_poll(config: RunConfig, stack: _Stack) -> None:
    from prefect import flow, get_client
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    from flows.annotate import SHARD_DEPLOYMENT, _ended, _idempotency_key, _waves
    from pipeline.labeling.shard_plan import plan_shards
    from pipeline.storage import storage_for

    items = sorted(storage_for(config.source, config).list(config.source), key=lambda i: i.key)
    waves = _waves(tuple(plan_shards(items, config.shard_size, 0, "bench-lease")), 1)

    def server() -> tuple[float, float]:
        pids = _descendants(stack.server_pids())
        return sum(_status(p, "VmRSS") or 0 for p in pids) / MIB, _cpu_seconds(pids)

    @flow(name="bench-submit")
    def submit() -> list[FlowRun]:
        submitted = []
        for wave in waves:  # one run per shard: the worst case the submissions can be
            run = run_deployment(
                name=SHARD_DEPLOYMENT,
                parameters={"shards": wave, "config": config},
                timeout=0,
                idempotency_key=_idempotency_key(config.out, wave),
            )
            assert isinstance(run, FlowRun)
            submitted.append(run)
        return submitted

    import torch

    before, _ = server()
    start = time.perf_counter()
    runs = submit()
    submit_s = time.perf_counter() - start
    after, _ = server()
    ids = [run.id for run in runs]
    print(
        f"{len(ids)} shard runs submitted to a real Prefect server ({stack.database}), no "
        f"worker; {os.cpu_count()} cores, cpu capability {torch.backends.cpu.get_cpu_capability()}"
    )
    print(
        f"submit: {submit_s:.1f} s, {1000 * submit_s / len(ids):.1f} ms per shard; server RSS "
        f"{before:.0f} MiB before, {after:.0f} MiB after"
    )
    with get_client(sync_client=True) as client:
        for name, poll in (
            ("one read per run", lambda: [client.read_flow_run(i).state for i in ids]),
            ("pages of ids (_ended)", lambda: _ended(client, ids)),
        ):
            _, cpu = server()
            start = time.perf_counter()
            poll()
            poll_s = time.perf_counter() - start
            _, cpu_after = server()
            print(
                f"one poll of {len(ids)} pending runs, {name}: {poll_s:.2f} s, server CPU "
                f"{cpu_after - cpu:.2f} s"
            )
    print(f"server RSS at the end: {server()[0]:.0f} MiB")


# --- process memory and CPU, from /proc ---------------------------------------------------


def _status(pid: int, key: str) -> int | None:
    """A ``/proc/PID/status`` figure in bytes (VmRSS, VmHWM); None for a process gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(parent, []).append(int(entry.name))
    return tree


def _descendants(roots: list[int], tree: dict[int, list[int]] | None = None) -> list[int]:
    """``roots`` and every process below them."""
    tree = _children() if tree is None else tree
    found: list[int] = []
    todo = list(roots)
    while todo:
        found.append(todo.pop())
        todo += tree.get(found[-1], [])
    return found


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of live processes (their waited-for children included)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _ephemeral_server() -> list[int]:
    """The ephemeral server Prefect started for this process (a subprocess in Prefect 3)."""
    from prefect.server.api.server import SubprocessASGIServer

    return [
        server.server_process.pid
        for server in SubprocessASGIServer._instances.values()
        if server.server_process is not None
    ]


@dataclass
class _Sampler:
    groups: dict[str, Callable[[], list[int]]]  # name: the processes at the top of its tree
    alone: set[str] = field(default_factory=set)  # groups without their processes' children
    phase: str = "start"
    peak: dict[str, dict[str, int]] = field(default_factory=lambda: {p: {} for p in PHASES})
    hwm: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        tree = _children()
        for name, roots in self.groups.items():
            pids = roots() if name in self.alone else _descendants(roots(), tree)
            rss = sum(_status(pid, "VmRSS") or 0 for pid in pids)
            peaks = self.peak[self.phase]
            peaks[name] = max(peaks.get(name, 0), rss)
            hwm = max((_status(pid, "VmHWM") or 0 for pid in pids), default=0)
            self.hwm[name] = max(self.hwm.get(name, 0), hwm)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        def loop() -> None:
            while not self._stop.wait(0.2):
                self.sample()

        self.sample()
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()

    def stop(self) -> None:
        self._stop.set()
        self.sample()


# --- a real Prefect server, a process work pool and its workers -----------------------------


class _Stack:
    def __init__(self, root: Path, workers: int, database: str) -> None:
        self.root, self.count, self.database = root / "prefect", workers, database
        self.root.mkdir()
        self.processes: list[subprocess.Popen[bytes]] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self.server: subprocess.Popen[bytes] | None = None
        self.postgres: Path | None = None

    def start(self) -> None:
        port = _free_port()
        url = f"http://127.0.0.1:{port}/api"
        base = {
            **os.environ,
            "DO_NOT_TRACK": "1",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        }
        server_env = {**base, "PREFECT_HOME": str(self.root / "server")}
        server_env.pop("PREFECT_API_URL", None)
        if self.database == "postgres":
            server_env["PREFECT_API_DATABASE_CONNECTION_URL"] = self._start_postgres()
        self.server = self._spawn(
            "server",
            [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            server_env,
        )
        _wait_healthy(url, self.server, 180)
        os.environ.update(base)
        os.environ["PREFECT_API_URL"] = url
        os.environ["PREFECT_HOME"] = str(self.root / "client")
        subprocess.run(
            [*PREFECT, "work-pool", "create", POOL, "--type", "process"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        for n in range(self.count):
            name = f"worker-{n + 1}"
            command = [*PREFECT, "worker", "start", "--pool", POOL, "--type", "process"]
            command += ["--limit", "1", "--name", name]
            env = {**os.environ, "PREFECT_HOME": str(self.root / name)}
            self.workers.append(self._spawn(name, command, env))

    def deploy(self, config: RunConfig) -> None:
        from flows.deploy import deploy

        deploy("bench", config, pool=POOL, cron=None, executor="deployment")

    def server_pids(self) -> list[int]:
        return [] if self.server is None else [self.server.pid]

    def postgres_pids(self) -> list[int]:
        pid_file = None if self.postgres is None else self.postgres / "d" / "postmaster.pid"
        if pid_file is None or not pid_file.exists():
            return []
        return [int(pid_file.read_text().split()[0])]

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.root / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.processes.append(process)
        return process

    def _start_postgres(self) -> str:
        """A throwaway cluster (the recipe in /work/shared/ENVIRONMENT.md): initdb as the
        ``postgres`` user, trust auth on loopback, a database ``prefect``."""
        binaries = Path("/usr/lib/postgresql/15/bin")
        self.postgres = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        shutil.chown(self.postgres, "postgres")
        port = str(_free_port())
        data = str(self.postgres / "d")
        as_pg = ["runuser", "-u", "postgres", "--"]
        initdb = [str(binaries / "initdb"), "-D", data, "-U", "prefect", "--auth=trust"]
        _quiet([*as_pg, *initdb, "-E", "UTF8", "--no-locale"])
        options = f"-h 127.0.0.1 -p {port} -k {self.postgres} -c max_connections=200"
        log = str(self.postgres / "log")
        _quiet(
            [*as_pg, str(binaries / "pg_ctl"), "-D", data, "-o", options, "-l", log, "-w", "start"]
        )
        address = ["-h", "127.0.0.1", "-p", port, "-U", "prefect"]
        _quiet([*as_pg, str(binaries / "createdb"), *address, "prefect"])
        return f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect"

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in reversed(self.processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.postgres is not None:
            subprocess.run(
                [
                    "runuser",
                    "-u",
                    "postgres",
                    "--",
                    "/usr/lib/postgresql/15/bin/pg_ctl",
                    "-D",
                    str(self.postgres / "d"),
                    "-m",
                    "fast",
                    "stop",
                ],
                capture_output=True,
                timeout=60,
                check=False,
            )
            shutil.rmtree(self.postgres, ignore_errors=True)


def _quiet(command: list[str]) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=120)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
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


if __name__ == "__main__":
    main()
