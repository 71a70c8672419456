"""Tracing in worker processes gives what tracing here gives, and the workers stay light."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.geometry.policy import RegionPolicy
from pipeline.geometry.regions import image_regions
from pipeline.labeling.tracing import trace, tracer
from pipeline.labeling.uncertainty import image_uncertainty
from pipeline.run.tables import regions_table

ROOT = Path(__file__).resolve().parents[2]


def _loaded() -> list[str]:
    """Runs in a worker: which heavy libraries its process has imported."""
    return [name for name in ("torch", "prefect") if name in sys.modules]


def test_a_worker_traces_what_this_process_traces() -> None:
    rng = np.random.default_rng(7)
    coarse = rng.integers(0, 4, (12, 16), dtype=np.uint8)
    class_map = np.kron(coarse, np.ones((8, 8), np.uint8))  # blocks: parts, holes, touching
    confidence = rng.integers(0, 256, class_map.shape, dtype=np.uint8)
    policy = RegionPolicy(min_area=8, simplify_tolerance=1.5)
    names = [f"class {i}" for i in range(4)]
    traced = tracer(1).submit(
        trace,
        class_map,
        confidence,
        image_id="img",
        lineage="content:model:config",
        class_names=names,
        policy=policy,
        low_confidence=0.4,
    )
    result = traced.result(timeout=120)
    here = image_regions(class_map, confidence, image_id="img", policy=policy, low_confidence=0.4)
    expected = regions_table(here.columns, names, {"img": "content:model:config"})
    assert result.rows.equals(expected) and len(here.regions) > 5
    assert result.doubt == image_uncertainty(
        class_map, confidence, low_confidence=0.4, fragments=here.fragments
    )


def test_workers_of_the_prelabel_command_import_neither_torch_nor_prefect(tmp_path: Path) -> None:
    """A spawned worker re-imports the entry script; the ``prelabel`` script imports only
    ``flows.__main__``, which must not pull in the CLI."""
    entry = tmp_path / "prelabel"
    entry.write_text(
        "from flows.__main__ import main  # the console script's own import\n"
        "if __name__ == '__main__':\n"
        "    from pipeline.labeling.tracing import tracer\n"
        "    from tests.labeling.test_tracing import _loaded\n"
        "    print(tracer(1).submit(_loaded).result(timeout=120))\n"
    )
    done = subprocess.run(
        [sys.executable, str(entry)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # ``tests`` too, installed or not
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_yielding_workers_run_below_this_process_priority() -> None:
    """On a CPU the workers share cores with the forward; they must never hold it up."""
    here = os.getpriority(os.PRIO_PROCESS, 0)
    assert tracer(1, yielding=True).submit(os.getpriority, os.PRIO_PROCESS, 0).result(60) == 19
    assert tracer(1).submit(os.getpriority, os.PRIO_PROCESS, 0).result(60) == here
    # Below nice 19 too: Linux's idle class never preempts the model's threads.
    policy = tracer(1, yielding=True).submit(os.sched_getscheduler, 0).result(60)
    assert policy == os.SCHED_IDLE
    assert tracer(1).submit(os.sched_getscheduler, 0).result(60) == os.sched_getscheduler(0)


def test_a_worker_reuses_the_memory_tracing_frees() -> None:
    """Image after image, a worker's tracing allocates from memory it already holds, instead
    of faulting in fresh pages for each image (hundreds per 640x480 image otherwise)."""
    rng = np.random.default_rng(3)
    class_map = np.kron(rng.integers(0, 8, (30, 40), dtype=np.uint8), np.ones((16, 16), np.uint8))
    confidence = rng.integers(0, 256, class_map.shape, dtype=np.uint8)
    pool = tracer(1)

    def traced(times: int) -> None:
        for _ in range(times):
            pool.submit(
                trace,
                class_map,
                confidence,
                image_id="img",
                lineage="content:model:config",
                class_names=[f"class {i}" for i in range(8)],
                policy=RegionPolicy(),
                low_confidence=0.5,
            ).result(timeout=120)

    traced(3)
    before = pool.submit(resource.getrusage, resource.RUSAGE_SELF).result(60).ru_minflt
    traced(10)
    after = pool.submit(resource.getrusage, resource.RUSAGE_SELF).result(60).ru_minflt
    assert (after - before) / 10 < 30
