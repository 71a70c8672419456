"""Small shard files merged into full ones: a run folder grown by many small reruns would
otherwise make every export open a file per rerun, and hold one shard per pass at a time.

Shards whose latest rows fill less than half a shard are read in key order and their rows
written again, unchanged but for the ``shard`` column, as full shards of a new generation;
then the small ones are deleted, images file first (a records file without one is read by
nothing). A crash in between leaves rows in both, the new generation's winning: the same
labels, compacted again by the next run.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.run.layout import RunLayout
from pipeline.run.ledger import Ledger
from pipeline.run.tables import write_table
from pipeline.run.view import REGION_COLUMNS, Part, iter_parts

MIN_SMALL_SHARDS = 16  # fewer small shards cost less than rewriting them

log = logging.getLogger(__name__)


def compact(layout: RunLayout, ledger: Ledger, shard_size: int) -> Ledger:
    """Merge the small shards, by a run holding the folder's lease; returns the ledger after
    it (the same one when there was too little to merge), its index saved before any small
    shard is deleted."""
    held = pc.value_counts(ledger.images["shard"]).to_pylist()
    counts = {item["values"]: item["counts"] for item in held}
    small = [s for s in ledger.shards if counts.get(s, 0) < max(1, shard_size // 2)]
    if len(small) < MIN_SMALL_SHARDS:
        return ledger
    is_small = pc.is_in(ledger.images["shard"], pa.array(small, pa.string()))
    generation = ledger.next_generation
    made: list[tuple[str, int]] = []  # new shard, images in it, in key order
    pending: list[Part] = []
    small_rows = ledger.images.filter(is_small).select(["image_id", "shard"]).to_batches()
    for part in iter_parts(layout, small_rows, REGION_COLUMNS):
        pending.append(part)
        if sum(p.images.num_rows for p in pending) >= shard_size:
            made.append(_write(layout, f"shard-{generation:04d}-{len(made):05d}", pending))
            pending = []
    if pending:
        made.append(_write(layout, f"shard-{generation:04d}-{len(made):05d}", pending))
    moved = pa.array([shard for shard, count in made for _ in range(count)], pa.string())
    shards = ledger.images["shard"].combine_chunks()
    renamed = pc.replace_with_mask(shards, is_small.combine_chunks(), moved)
    kept = [s for s in ledger.shards if s not in set(small)]
    after = Ledger(
        images=ledger.images.set_column(
            ledger.images.schema.get_field_index("shard"), "shard", renamed
        ),
        shards=tuple(sorted([*kept, *(shard for shard, _ in made)])),
        merged=len(made),
        indexed=frozenset(kept),
    )
    after.save_index(layout)
    for shard in small:
        layout.storage.delete(layout.images(shard))
        layout.storage.delete(layout.records(shard))
    log.info("%s: %d small shards compacted into %d", layout.root, len(small), len(made))
    return after


def _write(layout: RunLayout, shard: str, parts: list[Part]) -> tuple[str, int]:
    """Records first, as a shard run writes them: an images row always has its regions."""
    images = pa.concat_tables([p.images for p in parts])
    images = images.set_column(
        images.schema.get_field_index("shard"),
        "shard",
        pa.array([shard] * images.num_rows, pa.string()),
    )
    write_table(layout.storage, layout.records(shard), pa.concat_tables([p.regions for p in parts]))
    write_table(layout.storage, layout.images(shard), images)
    return shard, images.num_rows
