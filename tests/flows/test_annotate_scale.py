"""Thousands of shards in one run: what the flow sends to Prefect does not grow per shard.

Shard runs are submitted a bounded window at a time and read a page at a time, the progress
artifact is sent at most once every few seconds (and always at the end), and tiny shards
share a task."""

from __future__ import annotations

import os
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast
from uuid import UUID, uuid4

import pytest
from prefect.client.schemas.objects import FlowRun, State
from prefect.states import Cancelled, Completed, Crashed, Failed, Pending, Running, Scheduled

import flows.annotate as annotate_module
from flows.annotate import (
    READ_PAGE,
    _ended,
    _ProgressArtifact,
    _run_on_deployment,
    _span,
    _waves,
)
from pipeline.labeling.annotate import RunPlan
from pipeline.labeling.shard_plan import Shard
from pipeline.storage import ObjectInfo


def _shards(sizes: list[int]) -> tuple[Shard, ...]:
    return tuple(
        Shard(
            f"shard-0000-{n:05d}",
            tuple(ObjectInfo(f"/in/{n}-{i}.png", f"{n}-{i}.png", 1, "e") for i in range(size)),
            "lease",
        )
        for n, size in enumerate(sizes)
    )


class _Updates:
    """Stands in for the artifact calls: records each progress sent."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[float] = []
        monkeypatch.setattr(annotate_module, "create_progress_artifact", lambda **_: uuid4())
        monkeypatch.setattr(
            annotate_module,
            "update_progress_artifact",
            lambda _id, progress: self.sent.append(progress),
        )


def test_progress_is_sent_at_most_once_an_interval_and_always_at_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    updates = _Updates(monkeypatch)
    now = [0.0]
    tracker = _ProgressArtifact(4000, interval=1.0, clock=lambda: now[0])
    for _ in range(4000):
        now[0] += 0.01  # a shard every 10 ms: 40 s in all
        tracker.advance()
    assert 39 <= len(updates.sent) <= 41
    assert updates.sent == sorted(updates.sent)
    assert updates.sent[-1] == 100.0


def test_a_run_of_few_quick_shards_still_ends_at_100_percent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    updates = _Updates(monkeypatch)
    tracker = _ProgressArtifact(3, clock=lambda: 0.0)
    tracker.advance(2)
    tracker.advance()
    assert updates.sent == [100.0]


def test_tiny_shards_share_tasks_and_large_ones_keep_their_own() -> None:
    tiny = _shards([1] * 70)
    assert [len(w) for w in _waves(tiny, 32)] == [32, 32, 6]
    assert [s for w in _waves(tiny, 32) for s in w] == list(tiny)
    assert [len(w) for w in _waves(_shards([256, 256, 10]), 32)] == [1, 1, 1]
    assert [len(w) for w in _waves(_shards([20, 20, 20, 5]), 32)] == [2, 2]
    assert _waves((), 32) == []


class _Server:
    """Stands in for the shard deployment and the API: a submitted run has ended, in the state
    ``ends`` gives it, by the first read after it; every read of flow runs is recorded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, ends: dict[str, State]) -> None:
        self.runs: dict[UUID, FlowRun] = {}
        self.ends = ends
        self.reads: list[int] = []  # ids asked for, per read
        self.in_flight: list[int] = []  # submitted and not seen ended, at each submission
        self.seen_ended: set[UUID] = set()
        self.submitted: list[tuple[str, ...]] = []  # the shards of each run, in order
        monkeypatch.setattr(annotate_module, "run_deployment", self.run_deployment)
        monkeypatch.setattr(annotate_module, "get_client", lambda **_: self)
        monkeypatch.setattr(annotate_module.time, "sleep", lambda _: None)

    def run_deployment(self, *, name: str, parameters: dict[str, Any], **_: Any) -> FlowRun:
        shards = parameters["shards"]
        self.submitted.append(tuple(s.shard_id for s in shards))
        run = FlowRun(flow_id=uuid4(), name=_span(shards), state=Scheduled())
        self.runs[run.id] = run
        self.in_flight.append(len(self.runs) - len(self.seen_ended))
        return run

    def __enter__(self) -> _Server:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def read_flow_runs(self, *, flow_run_filter: Any, **_: Any) -> list[FlowRun]:
        ids = flow_run_filter.id.any_
        types = set(flow_run_filter.state.type.any_)
        self.reads.append(len(ids))
        for i in ids:  # the workers had their time
            self.runs[i].state = self.ends.get(self.runs[i].name, Completed())
        ended = [r for i in ids if (r := self.runs[i]).state and r.state.type in types]
        self.seen_ended |= {r.id for r in ended}
        return ended


def test_shard_runs_go_in_a_bounded_window_read_a_page_at_a_time_and_failures_are_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    updates = _Updates(monkeypatch)
    monkeypatch.setattr(annotate_module, "IN_FLIGHT", 300)
    shards = _shards([1] * 650)
    server = _Server(
        monkeypatch,
        {
            "shard-0000-00007": Failed(message="CUDA out of memory"),
            "shard-0000-00300": Crashed(message="worker process exited with code -9"),
        },
    )
    plan = _plan(shards, run_images=1)
    tracker = _ProgressArtifact(len(shards), clock=lambda: 0.0)
    with pytest.raises(RuntimeError) as failed:
        _run_on_deployment(plan, "annotate-shard/shard", tracker)
    assert str(failed.value) == (
        "shard runs did not complete: shard-0000-00007 (Failed: CUDA out of memory); "
        "shard-0000-00300 (Crashed: worker process exited with code -9)"
    )
    assert sorted(r.name for r in server.runs.values()) == [s.shard_id for s in shards]
    assert max(server.in_flight) == 300
    # Three polls of 300, 300 and 50 runs, a page of ids per read.
    assert server.reads == [READ_PAGE, 300 - READ_PAGE] * 2 + [50]
    assert (tracker.done, updates.sent) == (650, [100.0])


def test_small_shards_share_a_run_on_the_pool_and_a_failed_run_names_its_shards(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A flow run on a worker starts a process of its own: consecutive shards under
    ``run_images`` images go together, larger ones alone."""
    _Updates(monkeypatch)
    shards = _shards([1] * 70 + [40, 3, 3])
    server = _Server(
        monkeypatch, {"shard-0000-00032..shard-0000-00063": Failed(message="CUDA error")}
    )
    tracker = _ProgressArtifact(len(shards), clock=lambda: 0.0)
    with pytest.raises(RuntimeError) as failed:
        _run_on_deployment(_plan(shards, run_images=32), "annotate-shard/shard", tracker)
    assert str(failed.value) == (
        "shard runs did not complete: shard-0000-00032..shard-0000-00063 (Failed: CUDA error)"
    )
    assert [len(run) for run in server.submitted] == [32, 32, 7, 2]
    assert [s for run in server.submitted for s in run] == [s.shard_id for s in shards]
    assert tracker.done == len(shards)


def _plan(shards: tuple[Shard, ...], run_images: int) -> RunPlan:
    config = SimpleNamespace(out="/out", run_images=run_images)
    return cast(RunPlan, SimpleNamespace(shards=shards, config=config))


# --- against a real API --------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.mark.slow
def test_ended_reads_exactly_the_final_runs_among_more_than_a_page(prefect_server: None) -> None:
    from prefect import flow, get_client

    @flow(name="scale-test")
    def nothing() -> None:
        pass

    states = [Completed, Failed, Crashed, Cancelled, Running, Scheduled, Pending]
    with get_client(sync_client=True) as client:
        runs = [
            client.create_flow_run(nothing, state=states[n % len(states)]())
            for n in range(READ_PAGE + 50)
        ]
        client.create_flow_run(nothing, state=Completed())  # ended, not asked for
        ended = _ended(client, [r.id for r in runs])
    final = {r.id for n, r in enumerate(runs) if n % len(states) < 4}
    assert sorted(r.id for r in ended) == sorted(final)  # each once, no other
    assert all(r.state is not None and r.state.is_final() for r in ended)
