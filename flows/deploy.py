"""Scheduled annotate jobs: deployments on a work pool, or served from one host.

A deployment's parameters are a whole ``RunConfig``, so a scheduled run is ``annotate`` with
those settings; the run folder's ledger makes each run label only new and changed images.
"""

from __future__ import annotations

from typing import Any

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.types.entrypoint import EntrypointType

from flows.annotate import Executor, annotate_flow, shard_flow
from pipeline.config import RunConfig

SHARD_DEPLOYMENT_NAME = "shard"


def _parameters(config: RunConfig, executor: Executor) -> dict[str, Any]:
    return {"config": config.model_dump(mode="json"), "executor": executor}


def deploy(name: str, config: RunConfig, *, pool: str, cron: str | None, executor: Executor) -> str:
    """Create or update ``annotate/NAME`` (and the shard deployment its workers run) on
    ``pool``; returns the deployment's id.

    Entrypoints are module paths (``flows.annotate.annotate_flow``), so a worker runs the
    prelabel installed where it runs (a container, another machine), not files at this
    machine's paths: there is nothing to pull."""
    deployments = [
        shard_flow.to_deployment(SHARD_DEPLOYMENT_NAME, entrypoint_type=EntrypointType.MODULE_PATH),
        annotate_flow.to_deployment(
            name,
            cron=cron,
            parameters=_parameters(config, executor),
            description=f"prelabel annotate {config.source} -> {config.out}",
            entrypoint_type=EntrypointType.MODULE_PATH,
        ),
    ]
    ids = [_runner(d).apply(work_pool_name=pool) for d in deployments]
    return str(ids[-1])


def serve_here(name: str, config: RunConfig, *, cron: str | None, executor: Executor) -> None:
    """Serve ``annotate/NAME`` on its schedule, and the shard deployment, from this process
    until it is stopped: scheduled jobs on one host without a work pool."""
    serve(
        _runner(
            annotate_flow.to_deployment(name, cron=cron, parameters=_parameters(config, executor))
        ),
        _runner(shard_flow.to_deployment(SHARD_DEPLOYMENT_NAME)),
    )


def _runner(made: object) -> RunnerDeployment:
    """Called from sync code, ``to_deployment`` returns the deployment, not a coroutine."""
    assert isinstance(made, RunnerDeployment)
    return made
