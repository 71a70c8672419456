"""An annotate run as plain functions: plan, process shards, finish. Prefect wires these same
functions into a flow; everything here runs and tests without it."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pipeline import progress
from pipeline.config import RunConfig
from pipeline.decode import IMAGE_EXTENSIONS, is_image_name
from pipeline.exporters.coco import coco_from_tables
from pipeline.models import load_predictor
from pipeline.run_folder import ModelInfo, RunLayout, RunManifest, code_version
from pipeline.shards import Shard, ShardResult, plan_shards, process_shard
from pipeline.storage import storage_for
from pipeline.tables import IMAGES_SCHEMA, REGIONS_SCHEMA, read_tables

_EXTENSIONS = ", ".join(sorted(IMAGE_EXTENSIONS))


class RunError(Exception):
    """The run cannot start (no images, unusable output); the message says why in one line."""


@dataclass(frozen=True, slots=True)
class RunPlan:
    config: RunConfig
    shards: tuple[Shard, ...]
    images: int
    skipped: int  # listed files that are not images by extension
    model: ModelInfo
    started_at: datetime


@dataclass(frozen=True, slots=True)
class RunSummary:
    out: str
    images: int
    skipped: int  # files in the source that are not images by extension
    failed: tuple[tuple[str, str], ...]  # (key, reason)
    regions: int
    class_counts: dict[str, int]
    seconds: float
    exports: tuple[str, ...]

    @property
    def labeled(self) -> int:
        return self.images - len(self.failed)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def to_markdown(self) -> str:
        lines = [
            f"**{self.labeled}/{self.images} images labeled**, {self.regions} regions, "
            f"{self.seconds:.1f} s ({self.images_per_second:.2f} img/s); run folder `{self.out}`",
            "",
            "| class | regions |",
            "|---|---|",
            *(f"| {name} | {count} |" for name, count in self.class_counts.items()),
        ]
        if self.failed:
            lines += ["", f"**{len(self.failed)} failed** (see `images/*.parquet`):", ""]
            lines += [f"- `{key}`: {reason}" for key, reason in self.failed]
        return "\n".join(lines)


def preflight(config: RunConfig) -> None:
    """The checks that make a run fail before it starts: an image in the source, the output
    writable, the model loadable. Cheap: the listing stops at the first image, and the model
    stays cached for the run."""
    listing = storage_for(config.source).list(config.source)
    if not any(is_image_name(item.key) for item in listing):
        raise RunError(f"{config.source}: no images found (looked for {_EXTENSIONS})")
    storage_for(config.out).ensure_writable(config.out)
    load_predictor(config.model, config.device, config.low_confidence)


def plan_run(config: RunConfig) -> RunPlan:
    """List the source, cut it into shards and load the model once, so a run that cannot work
    fails here, before any image is processed."""
    started = datetime.now(UTC)
    storage_for(config.out).ensure_writable(config.out)
    listed = list(storage_for(config.source).list(config.source))
    # Sorted by key: shards, ids and outputs are the same whatever order the store lists in.
    items = sorted((item for item in listed if is_image_name(item.key)), key=lambda i: i.key)
    if not items:
        raise RunError(f"{config.source}: no images found (looked for {_EXTENSIONS})")
    meta = load_predictor(config.model, config.device, config.low_confidence).meta
    model = ModelInfo(
        ref=config.model,
        arch=meta.arch,
        source=meta.source,
        model_version=meta.model_version,
        class_names=meta.class_names,
    )
    shards = tuple(plan_shards(items, config.shard_size))
    return RunPlan(config, shards, len(items), len(listed) - len(items), model, started)


def finish_run(plan: RunPlan, results: Sequence[ShardResult]) -> RunSummary:
    """Derive the exports from the written records, then write ``run.json`` last, so a run
    folder with a manifest is a finished run."""
    config = plan.config
    layout = RunLayout(storage_for(config.out), config.out)
    shard_ids = [s.shard_id for s in plan.shards]
    images = read_tables(layout.storage, [layout.images(s) for s in shard_ids], IMAGES_SCHEMA)
    regions = read_tables(layout.storage, [layout.records(s) for s in shard_ids], REGIONS_SCHEMA)
    coco = coco_from_tables(images, regions, plan.model.class_names, config.regions.background)
    coco_uri = layout.export("coco.json")
    layout.storage.write_atomic(coco_uri, json.dumps(coco).encode())
    finished = datetime.now(UTC)
    failed = tuple(f for r in results for f in r.failed)
    counts: Counter[int] = Counter()
    for r in results:
        counts.update(r.class_counts)
    manifest = RunManifest(
        prelabel_version=code_version(),
        config=config.model_dump(mode="json"),
        model=plan.model,
        shards=tuple(shard_ids),
        started_at=plan.started_at,
        finished_at=finished,
        images=plan.images,
        images_failed=len(failed),
        regions=sum(r.regions for r in results),
    )
    layout.storage.write_atomic(layout.manifest, manifest.model_dump_json(indent=2).encode())
    return RunSummary(
        out=config.out,
        images=plan.images,
        skipped=plan.skipped,
        failed=failed,
        regions=manifest.regions,
        class_counts={plan.model.class_names[c]: n for c, n in sorted(counts.items())},
        seconds=(finished - plan.started_at).total_seconds(),
        exports=(coco_uri,),
    )


def annotate(config: RunConfig) -> RunSummary:
    """The whole run in this process, without Prefect."""
    plan = plan_run(config)
    progress.started(plan.images)
    results = [process_shard(shard, config) for shard in plan.shards]
    return finish_run(plan, results)
