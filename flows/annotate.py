"""The annotate flow: plan, one task per shard, finish. It only wires ``pipeline`` functions."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pipeline import progress
from pipeline.annotate import RunSummary, finish_run, plan_run
from pipeline.config import RunConfig
from pipeline.shards import process_shard

# Inputs hold a whole shard listing and results are cheap to recompute from the run folder,
# so Prefect's input-hash caching would only cost time.
plan_task = task(name="plan", cache_policy=NO_CACHE)(plan_run)
shard_task = task(name="shard", cache_policy=NO_CACHE, task_run_name="{shard.shard_id}")(
    process_shard
)
finish_task = task(name="finish", cache_policy=NO_CACHE)(finish_run)


@flow(name="annotate")
def annotate_flow(config: RunConfig) -> RunSummary:
    plan = plan_task(config)
    progress.started(plan.images - plan.done)
    results = [shard_task(shard, config) for shard in plan.shards]
    summary = finish_task(plan, results)
    create_markdown_artifact(
        key="annotate-summary", markdown=summary.to_markdown(), description="prelabel annotate run"
    )
    return summary
