"""Scheduled annotate jobs: deployments on a work pool, or served from one host.

A deployment's parameters are a whole ``RunConfig``, so a scheduled run is ``annotate`` with
those settings; the run folder's ledger makes each run label only new and changed images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.flows import Flow

from flows.annotate import Executor, annotate_flow, shard_flow
from pipeline.config import RunConfig

# Workers load the flows from the installed package's own directory: the same code as here.
_CODE_ROOT = str(Path(__file__).resolve().parent.parent)
SHARD_DEPLOYMENT_NAME = "shard"


def _parameters(config: RunConfig, executor: Executor) -> dict[str, Any]:
    return {"config": config.model_dump(mode="json"), "executor": executor}


def deploy(name: str, config: RunConfig, *, pool: str, cron: str | None, executor: Executor) -> str:
    """Create or update ``annotate/NAME`` (and the shard deployment its workers run) on
    ``pool``; returns the deployment's id."""
    entry = "flows/annotate.py:"
    shard: Flow[..., Any] = shard_flow.from_source(_CODE_ROOT, entry + "shard_flow")  # type: ignore[assignment]
    shard.deploy(SHARD_DEPLOYMENT_NAME, work_pool_name=pool, print_next_steps=False)
    annotate: Flow[..., Any] = annotate_flow.from_source(_CODE_ROOT, entry + "annotate_flow")  # type: ignore[assignment]
    deployment_id = annotate.deploy(
        name,
        work_pool_name=pool,
        cron=cron,
        parameters=_parameters(config, executor),
        description=f"prelabel annotate {config.source} -> {config.out}",
        print_next_steps=False,
    )
    return str(deployment_id)


def serve_here(name: str, config: RunConfig, *, cron: str | None, executor: Executor) -> None:
    """Serve ``annotate/NAME`` on its schedule, and the shard deployment, from this process
    until it is stopped: scheduled jobs on one host without a work pool."""
    deployments = [
        annotate_flow.to_deployment(name, cron=cron, parameters=_parameters(config, executor)),
        shard_flow.to_deployment(SHARD_DEPLOYMENT_NAME),
    ]
    # Called from sync code, to_deployment returns the deployment, not a coroutine.
    serve(*(d for d in deployments if isinstance(d, RunnerDeployment)))
