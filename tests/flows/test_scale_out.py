"""Scale-out on a real Prefect server: shards as flow runs on two process workers, and a
scheduled deployment whose runs label only what is new."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from deeplab.scenes import scenes
from pipeline.config import RunConfig
from pipeline.labeling.annotate import annotate
from tests.prefect_server import PrefectStack
from tests.run.test_resume import comparable, merged

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _images(folder: Path, count: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(scenes(seed, count, height=96, width=128)):
        Image.fromarray(scene.image).save(folder / f"s{seed}-{i:02d}.png")


def _read(stack: PrefectStack, fn: Any) -> Any:
    """Call ``fn(client)`` with a sync client of the test server."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings({PREFECT_API_URL: stack.api_url}),
        get_client(sync_client=True) as client,
    ):
        return fn(client)


def _wait_for_run(stack: PrefectStack, run_id: str, seconds: float = 400) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = _read(stack, lambda c: c.read_flow_run(run_id).state)
        if state is not None and state.is_final():
            return str(state.type.value)
        time.sleep(1)
    raise TimeoutError(f"flow run {run_id} not final after {seconds} s")


def test_shards_run_on_two_workers_in_runs_of_several_and_records_equal_a_local_run(
    prefect_stack: PrefectStack, tmp_path: Path
) -> None:
    source = tmp_path / "in"
    _images(source, 8, seed=11)
    out = tmp_path / "distributed"
    deployed = prefect_stack.cli(
        "deploy",
        "shards-test",
        "--source",
        str(source),
        "--out",
        str(out),
        "--pool",
        prefect_stack.pool,
        "--device",
        "cpu",
    )
    assert deployed.returncode == 0, deployed.stderr
    result = prefect_stack.cli(
        "annotate",
        str(source),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--shard-size",
        "2",
        "--executor",
        "deployment",
        env={"PRELABEL_RUN_IMAGES": "4"},  # two shards of two images to a flow run
    )
    assert result.returncode == 0, result.stderr
    reference = tmp_path / "local"
    annotate(RunConfig(source=str(source), out=str(reference), device="cpu", shard_size=2))
    images, regions = merged(out)
    ref_images, ref_regions = merged(reference)
    assert comparable(images) == comparable(ref_images)
    assert regions.equals(ref_regions)
    assert sorted(set(images.column("shard").to_pylist())) == [
        f"shard-0000-{n:05d}" for n in range(4)
    ]
    shard_runs = _read(
        prefect_stack,
        lambda c: [r for r in c.read_flow_runs(limit=50) if r.name.startswith("shard-0000-")],
    )
    # Both workers may try to claim one run; only the one that runs it logs its page's URL
    # (the other logs an aborted submission).
    ran_by = {}
    for log in prefect_stack.worker_logs:
        for run in shard_runs:
            if f"/flow-run/{run.id}" in log.read_text(errors="replace"):
                ran_by.setdefault(log.stem, []).append(run.name)
    assert set(ran_by) == {"worker-a", "worker-b"}, ran_by
    assert sorted(n for names in ran_by.values() for n in names) == [
        "shard-0000-00000..shard-0000-00001",
        "shard-0000-00002..shard-0000-00003",
    ]


def test_deploy_schedules_and_each_run_labels_only_new_images(
    prefect_stack: PrefectStack, tmp_path: Path
) -> None:
    source = tmp_path / "in"
    _images(source, 3, seed=21)
    out = tmp_path / "nightly"
    deployed = prefect_stack.cli(
        "deploy",
        "nightly",
        "--source",
        str(source),
        "--out",
        str(out),
        "--pool",
        prefect_stack.pool,
        "--cron",
        "0 2 * * *",
        "--device",
        "cpu",
    )
    assert deployed.returncode == 0, deployed.stderr
    deployment = _read(prefect_stack, lambda c: c.read_deployment_by_name("annotate/nightly"))
    assert [s.schedule.cron for s in deployment.schedules] == ["0 2 * * *"]
    assert deployment.work_pool_name == prefect_stack.pool
    # A module entrypoint and nothing to pull: workers run their own installed prelabel.
    assert (deployment.entrypoint, deployment.pull_steps) == ("flows.annotate.annotate_flow", [])

    def run_now() -> str:
        started = _read(prefect_stack, lambda c: c.create_flow_run_from_deployment(deployment.id))
        assert _wait_for_run(prefect_stack, started.id) == "COMPLETED"
        return str(started.id)

    run_now()
    _images(source, 2, seed=22)
    run_now()
    images, _ = merged(out)
    by_shard: dict[str, list[str]] = {}
    for row in images.to_pylist():
        by_shard.setdefault(row["shard"], []).append(row["key"])
    assert by_shard == {
        "shard-0000-00000": [f"s21-{i:02d}.png" for i in range(3)],
        "shard-0001-00000": [f"s22-{i:02d}.png" for i in range(2)],
    }
    assert re.search(r"nightly", deployed.stdout + deployed.stderr)
