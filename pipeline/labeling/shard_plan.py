"""Shards of a run as plain data: what each holds, and its figures once written.

Kept apart from the labeling code (``labeling.shards``) so that planning a run, and finishing
one that had nothing to label, import neither torch nor OpenCV.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.run.tables import stable_id
from pipeline.storage import ObjectInfo


@dataclass(frozen=True, slots=True)
class Shard:
    shard_id: str
    items: tuple[ObjectInfo, ...]
    lease: str  # the run folder's lease it is written under (see pipeline.run.lease)


@dataclass(frozen=True, slots=True)
class ShardStats:
    """Counts and time of one shard, for progress and the per-shard table of a run."""

    shard_id: str
    images: int
    failed: int
    regions: int
    work_seconds: float  # read + decode + predict + regions, summed over its images


def shard_stats(shard_id: str, rows: Iterable[Mapping[str, Any]]) -> ShardStats:
    """From images-table rows, so a shard run here and one run by a remote worker (read back
    from the run folder) are reported alike."""
    images = failed = regions = 0
    milliseconds = 0.0
    for row in rows:
        images += 1
        failed += row["status"] != "ok"
        regions += row["region_count"]
        milliseconds += sum(row[c] for c in ("read_ms", "decode_ms", "predict_ms", "regions_ms"))
    return ShardStats(shard_id, images, failed, regions, milliseconds / 1000)


def plan_shards(
    items: Sequence[ObjectInfo], shard_size: int, generation: int, lease: str
) -> list[Shard]:
    """Shards of one pass over a run folder; the generation keeps their names new (see ledger)."""
    return [
        Shard(
            shard_id=f"shard-{generation:04d}-{i // shard_size:05d}",
            items=tuple(items[i : i + shard_size]),
            lease=lease,
        )
        for i in range(0, len(items), shard_size)
    ]


def image_id_for(key: str) -> str:
    """Stable per source path, so runs of different models over one folder join on it."""
    return stable_id(key)
