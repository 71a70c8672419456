"""bench/bench_scale.py makes run folders that prelabel's own readers take as finished runs of
the demo model: opened, exported to every format, verified and evaluated with the counts that
were synthesized, and planned again with only the new images to label."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipeline.config import RunConfig
from pipeline.formats import EXPORTERS, ExportOptions, export, open_run
from pipeline.labeling.annotate import plan_run, run_lease
from pipeline.labeling.model_ids import model_info
from pipeline.quality.evaluate import evaluate_runs
from pipeline.quality.truth import open_truth
from pipeline.run.layout import RunLayout
from pipeline.run.verify import verify_run
from pipeline.storage import LocalStorage

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_scale.py"
IMAGES, NEW, FAILED, SHARD_SIZE = 30, 3, 2, 10


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scale", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_scale"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Made:
    bench: ModuleType
    run: Any  # bench_scale.Synthesized


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    bench = _load()
    root = tmp_path_factory.mktemp("scale")
    model = model_info(RunConfig(source=str(root / "images"), out=str(root / "run")))
    run = bench.synthesize(
        str(root),
        IMAGES,
        model=model,
        shard_size=SHARD_SIZE,
        templates=1,
        variants=2,
        new=NEW,
        failed=FAILED,
    )
    return Made(bench, run)


def test_every_reader_takes_the_run_with_its_counts(made: Made) -> None:
    run = made.run
    assert (run.images, run.failed, run.listed, run.shards) == (IMAGES, FAILED, IMAGES + NEW, 3)
    view = open_run(run.out)
    assert view.images.num_rows == IMAGES and view.regions.num_rows == run.regions
    assert view.images.column("region_count").to_pylist().count(0) == FAILED
    assert sum(view.images.column("region_count").to_pylist()) == run.regions
    per_image = [c for c in view.images.column("region_count").to_pylist() if c]
    assert all(5 <= c <= 50 for c in per_image)
    holes = [len(p) - 1 for ps in view.regions.column("polygons").to_pylist() for p in ps]
    assert max(holes) > 0  # rings with holes, not only plain outlines

    health = verify_run(RunLayout(LocalStorage(), run.out))
    assert health.ok, health.problems
    assert (health.shards, health.images, health.regions) == (3, IMAGES, run.regions)
    assert (health.labeled, health.failed) == (IMAGES - FAILED, FAILED)

    written = export(view, list(EXPORTERS), ExportOptions())
    assert all(Path(uri).exists() for uri in written)
    coco = json.loads(Path(view.layout.export("coco.json")).read_bytes())
    assert len(coco["images"]) == IMAGES - FAILED
    assert len(coco["annotations"]) == run.regions
    assert pq.read_metadata(view.layout.export("regions.parquet")).num_rows == run.regions
    masks = list(Path(view.layout.export("masks"), "SegmentationClass").rglob("*.png"))
    assert len(masks) == IMAGES - FAILED

    evaluation = evaluate_runs([view], open_truth(run.truth))[0]
    assert evaluation.images == IMAGES - FAILED and not evaluation.missing
    assert evaluation.miou is not None and 0.5 < evaluation.miou < 1


def test_a_rerun_plans_exactly_the_new_images(made: Made) -> None:
    run = made.run
    # engine and device do not enter the config hash: the folder is still this run's own
    config = RunConfig(
        source=run.source, out=run.out, shard_size=SHARD_SIZE, engine="torch", device="cpu"
    )
    with run_lease(config) as lease:
        plan = plan_run(config, lease.token)
    assert (plan.images, plan.done) == (IMAGES + NEW, IMAGES)
    assert [item.key for shard in plan.shards for item in shard.items] == run.new_keys
    assert all(shard.shard_id.startswith("shard-0001-") for shard in plan.shards)


def test_a_step_runs_in_its_own_process_and_is_checked(made: Made, tmp_path: Path) -> None:
    spec = {"step": "open", "out": made.run.out}
    figures, wall, _, problem = made.bench.measure(
        spec, folder=tmp_path, max_rss_mib=4096, timeout=120
    )
    assert problem is None and figures is not None
    assert made.bench.check("open", figures, made.run) is None
    assert figures["peak_kib"] > 10_000 and 0 < figures["seconds"] < wall
    assert made.bench.check("open", {**figures, "regions": 0}, made.run) is not None


def test_help_is_quick() -> None:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(BENCH), "--help"], capture_output=True, text=True, check=True
    )
    assert "--sizes" in done.stdout and "--s3" in done.stdout
    assert time.perf_counter() - start < 5
