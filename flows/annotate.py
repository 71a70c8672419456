"""The annotate flow: plan, shards, finish. It only wires ``pipeline`` functions.

Shards run in this flow (``local``: one task each, or a few to a task where they are tiny) or
as flow runs of the shard deployment on a work pool (``deployment``: one worker per GPU machine
picks them up). Both write the same shard files, and the finish step reads the run folder, so
outputs are the same either way.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import socket
import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor
from typing import Literal, ParamSpec, TypeVar
from uuid import UUID

import prefect.runtime
from prefect import Task, flow, get_client, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import TERMINAL_STATES, FlowRun, State
from prefect.concurrency.sync import concurrency
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectAlreadyExists
from prefect.tasks import TaskRunNameValueOrCallable

from deeplab.predictor import resolve_device
from pipeline.config import RunConfig
from pipeline.labeling import progress
from pipeline.labeling.annotate import (
    REPAIR_PASSES,
    RunPlan,
    RunSummary,
    finish_run,
    plan_run,
    run_lease,
)
from pipeline.labeling.shard_plan import Shard
from pipeline.labeling.shards import process_shard
from pipeline.retry import DELAYS, is_transient, retrying
from pipeline.run.ledger import DamagedShardError

SHARD_DEPLOYMENT = "annotate-shard/shard"
POLL_SECONDS = 1.0  # between reads of the shard runs still going
# Shard runs submitted and not ended, at most: the next are submitted as these end. All of a
# large run's shards queued at once would wait for hours (marked Late by the server, one by
# one, while workers need its CPU and database); this many keep 200 workers busy.
IN_FLIGHT = 200
# Flow run ids per read: a page at the server's default limit (PREFECT_SERVER_API_DEFAULT_LIMIT);
# a server set lower answers fewer per read, and the rest come with the next poll.
READ_PAGE = 200
PROGRESS_SECONDS = 5.0  # between updates of the progress artifact
# A task costs milliseconds of Prefect's bookkeeping, here and on the server: as much as a
# shard of one small image. Run locally, shards smaller than this share a task, so that cost
# is paid once per this many images (see bench/bench_prefect.py); larger ones run one a task.
TASK_IMAGES = 64
FINAL_STATES = sorted(TERMINAL_STATES)
P = ParamSpec("P")
R = TypeVar("R")
Executor = Literal["local", "deployment"]


def _transient(task: object, task_run: object, state: State) -> bool:
    """Retry what may pass (a throttled or dropped storage call, the network, device memory,
    a tracing process killed for memory); a refusal, a full disk or a bad image would fail
    the same way again."""
    try:
        state.result()
    except (MemoryError, BrokenExecutor):
        return True
    except Exception as exc:
        return is_transient(exc)
    return False


def _step(
    fn: Callable[P, R], name: str, run_name: TaskRunNameValueOrCallable | None = None
) -> Task[P, R]:
    """Every step touches the run folder, so every step retries what may pass, the same way.
    Inputs hold a whole shard listing and results are cheap to recompute from the run
    folder, so Prefect's input-hash caching would only cost time."""
    return task(
        name=name,
        task_run_name=run_name,
        cache_policy=NO_CACHE,
        retries=len(DELAYS),
        retry_delay_seconds=list(DELAYS),
        retry_condition_fn=_transient,
    )(fn)


def process_shards(shards: tuple[Shard, ...], config: RunConfig) -> None:
    """Shards too small for a task each, one after another in one task: the same files as a
    task per shard. A retry runs them again from the first, as a shard's retry does its
    images. Nothing is returned (the finish step reads the run folder), so nothing of theirs
    is kept with the flow's results."""
    for shard in shards:
        process_shard(shard, config)


def _wave_name() -> str:
    return _span(prefect.runtime.task_run.parameters["shards"])


def _waves(shards: tuple[Shard, ...], images: int) -> list[tuple[Shard, ...]]:
    """Consecutive shards cut into groups of at least ``images`` images (the last may hold
    fewer), each group ending at the shard that brings it there: shards of ``images`` or
    more, as a run's shards are by default, go one to a group."""
    waves: list[tuple[Shard, ...]] = []
    wave: list[Shard] = []
    held = 0
    for shard in shards:
        wave.append(shard)
        held += len(shard.items)
        if held >= images:
            waves.append(tuple(wave))
            wave, held = [], 0
    if wave:
        waves.append(tuple(wave))
    return waves


plan_task = _step(plan_run, "plan")
shard_task = _step(process_shard, "shard", "{shard.shard_id}")
shards_task = _step(process_shards, "shards", _wave_name)
finish_task = _step(finish_run, "finish")


def _run_name() -> str:
    return _span(prefect.runtime.flow_run.parameters["shards"])


def _span(shards: tuple[Shard, ...]) -> str:
    """A shard's id, or the first and last of consecutive ones."""
    first, last = shards[0].shard_id, shards[-1].shard_id
    return first if first == last else f"{first}..{last}"


@flow(name="annotate-shard", flow_run_name=_run_name)
def shard_flow(shards: tuple[Shard, ...], config: RunConfig) -> None:
    """Shards as a worker runs them, one after another (``_run_shards``): holding this
    machine's device, so two shards never share one GPU however many runs the worker takes."""
    with concurrency(_device_slot(config.device), occupy=1):
        _run_shards(shards, config)


def _run_shards(
    shards: tuple[Shard, ...], config: RunConfig, tracker: _ProgressArtifact | None = None
) -> None:
    """A task per shard, or per few where they are tiny (``TASK_IMAGES``)."""
    for wave in _waves(shards, TASK_IMAGES):
        if len(wave) == 1:
            shard_task(wave[0], config)
        else:
            shards_task(wave, config)
        if tracker is not None:
            tracker.advance(len(wave))


@flow(name="annotate")
def annotate_flow(
    config: RunConfig, executor: Executor = "local", shard_deployment: str = SHARD_DEPLOYMENT
) -> RunSummary:
    """Under the run folder's lease (shared with a CLI that took it already): plan, shards,
    finish; planned again if the finish step found a shard damaged and moved it aside."""
    with contextlib.ExitStack() as stack:
        lease = retrying(lambda: stack.enter_context(run_lease(config)))
        for attempt in range(1, REPAIR_PASSES + 1):
            plan = plan_task(config, lease.token)
            progress.started(plan.images - plan.done)
            tracker = _ProgressArtifact(len(plan.shards))
            if executor == "local":
                _run_shards(plan.shards, config, tracker)
            else:
                _run_on_deployment(plan, shard_deployment, tracker)
            try:
                summary: RunSummary = finish_task(plan)
                break
            except DamagedShardError:
                if attempt == REPAIR_PASSES:
                    raise
    create_table_artifact(
        key="annotate-shards",
        table=[
            {
                "shard": s.shard_id,
                "images": s.images,
                "failed": s.failed,
                "regions": s.regions,
                "work seconds": round(s.work_seconds, 2),
            }
            for s in summary.shards
        ],
        description="prelabel annotate: per-shard counts and time",
    )
    create_markdown_artifact(
        key="annotate-summary", markdown=summary.to_markdown(), description="prelabel annotate run"
    )
    return summary


class _ProgressArtifact:
    """The run's progress artifact, sent at most once per ``interval`` seconds and when the
    last shard ends: an update per shard would be a round trip to the server per shard."""

    def __init__(
        self,
        shards: int,
        interval: float = PROGRESS_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.done, self.interval = shards, 0, interval
        self.clock = clock
        created = create_progress_artifact(
            progress=100.0 if shards == 0 else 0.0,
            key="annotate-progress",
            description="prelabel annotate: shards done",
        )
        assert isinstance(created, UUID)  # called from sync code: not a coroutine
        self.id = created
        self.sent = clock()

    def advance(self, shards: int = 1) -> None:
        self.done += shards
        now = self.clock()
        if self.done >= self.total or now - self.sent >= self.interval:
            update_progress_artifact(self.id, progress=100.0 * self.done / self.total)
            self.sent = now


def _run_on_deployment(plan: RunPlan, deployment: str, tracker: _ProgressArtifact) -> None:
    """Run the shards as flow runs of ``deployment``, consecutive small ones together
    (``RunConfig.run_images``), at most ``IN_FLIGHT`` submitted and not ended at a time, the
    next submitted as others end; a failed run fails the run after the rest end.

    The idempotency key names the run folder, the shards and their exact images, so a
    retried parent re-attaches to its shard runs instead of starting them twice."""
    unsubmitted = iter(_waves(plan.shards, plan.config.run_images))
    pending: dict[UUID, tuple[Shard, ...]] = {}
    failed: list[str] = []
    with get_client(sync_client=True) as client:
        while True:
            for wave in itertools.islice(unsubmitted, IN_FLIGHT - len(pending)):
                submitted = run_deployment(
                    name=deployment,
                    parameters={"shards": wave, "config": plan.config},
                    timeout=0,
                    idempotency_key=_idempotency_key(plan.config.out, wave),
                )
                assert isinstance(submitted, FlowRun)  # called from sync code: not a coroutine
                pending[submitted.id] = wave
            if not pending:
                break
            time.sleep(POLL_SECONDS)
            ended = {run.id: run.state for run in _ended(client, list(pending))}
            for run_id in [i for i in pending if i in ended]:  # in shard order
                wave, state = pending.pop(run_id), ended[run_id]
                assert state is not None  # the filter matched its state's type
                images = sum(len(shard.items) for shard in wave)
                tracker.advance(len(wave))
                progress.advanced(images)
                if state.is_completed():
                    progress.shard_saved(images)
                else:
                    failed.append(f"{_span(wave)} ({state.name}: {state.message})")
    if failed:
        raise RuntimeError(f"shard runs did not complete: {'; '.join(failed)}")


def _ended(client: SyncPrefectClient, run_ids: list[UUID]) -> list[FlowRun]:
    """Those of ``run_ids`` in a final state, read a page of ids per request: thousands of
    shard runs waiting cost a few requests a poll, not one each."""
    ended: list[FlowRun] = []
    for start in range(0, len(run_ids), READ_PAGE):
        page = run_ids[start : start + READ_PAGE]
        ended += client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=page),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=FINAL_STATES)),
            ),
        )
    return ended


def _idempotency_key(out: str, shards: tuple[Shard, ...]) -> str:
    items = "\n".join(f"{i.key}\0{i.etag}" for shard in shards for i in shard.items)
    return f"{out}:{_span(shards)}:{hashlib.sha256(items.encode()).hexdigest()[:16]}"


def _device_slot(device: str) -> str:
    """A global concurrency limit of one per device of this host, created on first use."""
    resolved = str(resolve_device(device)).replace(":", "-")
    name = f"prelabel-{socket.gethostname()}-{resolved}"
    # Suppressed: another shard made it first.
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    return name
