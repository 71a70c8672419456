"""What a finished run says of itself (failures, regions per class, this pass's shards),
counted shard by shard so that finishing a run of any size holds one shard at a time."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.labeling.shard_plan import ShardStats, shard_stats
from pipeline.run.view import RunView


@dataclass(frozen=True, slots=True)
class Tally:
    images: int
    regions: int
    failed: tuple[tuple[str, str], ...]  # (key, reason), in key order
    class_counts: dict[str, int]  # regions per class, in class order, classes with none left out
    shards: dict[str, ShardStats]  # the shards asked for, by id
    held_in: tuple[str, ...]  # the shards holding every image's latest row, sorted
    # What ran the forward for the images of the shards asked for, "engine precision", sorted:
    # shards may run on other machines than the plan's, each recording its own.
    engines: tuple[str, ...]


def tally(view: RunView, shards: Collection[str]) -> Tally:
    per_class = np.zeros(len(view.class_names), np.int64)
    failed: list[tuple[str, str]] = []
    stats: dict[str, ShardStats] = {}
    engines: set[str] = set()
    wanted = pa.array(sorted(shards), pa.string())
    for part in view.parts(regions=("class_id",)):
        images = part.images
        per_class += np.bincount(
            part.regions["class_id"].to_numpy(), minlength=len(view.class_names)
        )[: len(view.class_names)]
        bad = images.filter(pc.not_equal(images["status"], "ok"))
        failed += [(row["key"], row["error"] or "") for row in bad.to_pylist()]
        ours = images.filter(pc.is_in(images["shard"], wanted))
        ran = ours.filter(pc.equal(ours["status"], "ok")).select(["engine", "precision"])
        engines.update(f"{e} {p}" for e, p in zip(*ran.to_pydict().values(), strict=True) if e)
        for shard in pc.unique(ours["shard"]).to_pylist():
            rows = ours.filter(pc.equal(ours["shard"], shard)).to_pylist()
            stats[shard] = _sum(stats.get(shard), shard_stats(shard, rows))
    return Tally(
        images=view.image_count,
        regions=int(per_class.sum()),
        failed=tuple(failed),
        class_counts={
            name: int(count)
            for name, count in zip(view.class_names, per_class.tolist(), strict=True)
            if count
        },
        shards=stats,
        held_in=view.rows.held_in,
        engines=tuple(sorted(engines)),
    )


def _sum(a: ShardStats | None, b: ShardStats) -> ShardStats:
    """A shard's rows can come in several parts where a later pass relabeled some of them."""
    if a is None:
        return b
    return ShardStats(
        b.shard_id,
        a.images + b.images,
        a.failed + b.failed,
        a.regions + b.regions,
        a.work_seconds + b.work_seconds,
    )
