"""The run folder as a ledger: which images are labeled, under which model and config.

Shard files are append-only. Every annotate pass over a folder is a new generation
(``shard-GGGG-NNNNN``); an image's row in a later shard supersedes its earlier rows, and the
regions that count are those of the shard holding its latest row. The images file of a shard is
written after its records file, so an images row always has its regions on disk: a crash between
the two leaves an unreferenced records file that nothing reads.

``index.parquet`` keeps the latest row per key, in a few columns, for the shards it names:
a rerun reads it and only the shards that landed since, not every shard of a large run. It
is derived data, rebuilt from the shards whenever it is missing, unreadable or names a shard
that is gone (moved aside as damaged).
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy import bool_, flatnonzero, zeros
from numpy.typing import NDArray

from pipeline.errors import PrelabelError
from pipeline.run.layout import RunLayout
from pipeline.run.tables import IMAGES_SCHEMA, write_table
from pipeline.storage import NotFoundError, ObjectInfo

_SHARD_FILE = re.compile(r"shard-(\d{4})-\d{5}\.parquet")
_PARQUET_MAGIC = b"PAR1"  # a Parquet file's last four bytes, after its footer's length
# What a plan, a check and an export need of each image's latest row; the rest stays in shards.
INDEX_SCHEMA = pa.schema(
    [
        IMAGES_SCHEMA.field(name)
        for name in (
            "key",
            "image_id",
            "shard",
            "status",
            "retryable",
            "etag",
            "model_version",
            "config_hash",
            "region_count",
        )
    ]
)
# What reading a run takes of each image's latest row (``LatestRows``).
READ_COLUMNS = ("image_id", "shard", "status", "region_count")
_COVERED = b"prelabel.shards"  # the index's metadata: the shard ids whose rows it holds
# Rows per row group of the index: reading a million rows decodes a group at a time, not all
# of a column's pages at once (measured at 10^6 rows: 63 MB above the table, not 122).
_INDEX_ROWS = 65_536

log = logging.getLogger(__name__)


class LedgerConflictError(PrelabelError):
    """The run folder holds labels from another model or config; mixing them would be wrong."""


class DamagedShardError(PrelabelError):
    """A shard file that exists but cannot be parsed (truncated, not Parquet, another schema):
    its images must be labeled again, after the file is moved aside (``quarantine``)."""

    def __init__(self, damage: Damage) -> None:
        super().__init__(
            f"{damage.uri}: unreadable ({damage.reason}); `prelabel annotate` on this run "
            "folder moves the shard aside and labels its images again"
        )
        self.damage = damage


@dataclass(frozen=True, slots=True)
class Damage:
    shard: str
    uri: str
    reason: str


@dataclass(frozen=True, slots=True)
class Ledger:
    """The latest row per image key (``INDEX_SCHEMA``), and the shard files that hold them."""

    images: pa.Table  # latest row per key, sorted by key
    shards: tuple[str, ...]  # every shard with a readable images file, in generation order
    damaged: tuple[Damage, ...] = ()  # shards whose images file cannot be parsed, left out
    merged: int = 0  # shards read whole because the index did not hold them yet
    indexed: frozenset[str] = frozenset()  # shards known from the index, their files unread

    @classmethod
    def load(cls, layout: RunLayout, *, use_index: bool = True) -> Ledger:
        """The index plus every shard that landed since it was written (every shard without
        ``use_index``). A listing or read that fails raises: taking a run folder that could
        not be read for an empty one would label everything again over it."""
        present = _shard_ids(layout)
        indexed = _read_index(layout, present) if use_index else None
        covered = set(indexed[1]) if indexed else set()
        tables = [indexed[0]] if indexed else []
        shards, damaged = [s for s in present if s in covered], []
        for shard in (s for s in present if s not in covered):
            try:
                images = read_shard_file(layout, layout.images(shard), IMAGES_SCHEMA)
                tables.append(images.select(INDEX_SCHEMA.names))
                shards.append(shard)
            except DamagedShardError as exc:
                damaged.append(exc.damage)
        every = pa.concat_tables(tables) if tables else INDEX_SCHEMA.empty_table()
        return cls(
            # The index alone is the latest rows already: sorting it again would copy it.
            images=every
            if len(tables) == 1 and indexed and _unique_sorted(every)
            else _latest_per_key(every),
            shards=tuple(sorted(shards)),
            damaged=tuple(damaged),
            merged=len(shards) - len(covered),
            indexed=frozenset(covered),
        )

    def save_index(self, layout: RunLayout) -> None:
        """Write the index when shards were merged into it; by a run under the folder's lease."""
        if not self.merged:
            return
        covered = json.dumps(list(self.shards)).encode()
        table = self.images.replace_schema_metadata({_COVERED: covered})
        write_table(layout.storage, layout.index, table, row_group_size=_INDEX_ROWS)

    def damaged_files(self, layout: RunLayout) -> list[Damage]:
        """Shards whose records file, or images file known only from the index, is missing or
        does not end as a Parquet file does (a truncated copy): found from each file's last
        bytes, without reading the rest."""
        found = []
        for shard in self.shards:
            uris = [layout.records(shard)]
            uris += [layout.images(shard)] if shard in self.indexed else []
            for uri in uris:
                try:
                    tail = layout.storage.read_tail(uri, 8)
                except NotFoundError:
                    found.append(Damage(shard, uri, "missing"))
                    break
                if len(tail) < 8 or tail[4:] != _PARQUET_MAGIC:
                    found.append(Damage(shard, uri, "truncated: no Parquet footer"))
                    break
        return found

    @property
    def next_generation(self) -> int:
        generations = [int(_SHARD_FILE.fullmatch(f"{s}.parquet")[1]) for s in self.shards]  # type: ignore[index]
        return max(generations, default=-1) + 1

    def check(self, *, model_version: str, config_hash: str, out: str) -> None:
        """Refuse to add labels from another model or config to this folder."""
        for column, wanted, what in (
            ("model_version", model_version, "model"),
            ("config_hash", config_hash, "labeling config"),
        ):
            held = sorted(set(self.images.column(column).to_pylist()) - {wanted})
            if held:
                raise LedgerConflictError(
                    f"{out} holds labels from another {what} ({held[0]}, this run: {wanted}); "
                    "write this run to a new --out folder"
                )

    def todo(self, items: Sequence[ObjectInfo]) -> list[ObjectInfo]:
        """:meth:`wanted` of a few listed objects."""
        keys = pa.array([i.key for i in items], pa.string())
        wanted = self.wanted(keys, pa.array([i.etag for i in items], pa.string()))
        return [items[n] for n in flatnonzero(wanted).tolist()]

    def wanted(self, keys: pa.Array, etags: pa.Array) -> NDArray[bool_]:
        """Which listed images to label: new, changed since they were labeled, or failed for
        a reason outside the file; an image that failed as bad input is not retried until its
        bytes change. Column-wise: a listing holds millions of images."""
        if not len(keys):
            return zeros(0, bool_)
        at = pc.index_in(keys, self.images["key"])
        held = self.images.select(["etag", "status", "retryable"]).take(at)
        changed = pc.not_equal(held["etag"], etags)
        retry = pc.and_(pc.not_equal(held["status"], "ok"), held["retryable"])
        wanted = pc.fill_null(pc.or_(changed, retry), True)
        return wanted.to_numpy(zero_copy_only=False)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class LatestRows:
    """Every image's latest row in key order, for reading a run, with its counts. Read from the
    index file a row group at a time when it holds every shard, so that a million rows are
    never decoded at once; else from a ledger's rows, merged in memory (``Ledger.load``)."""

    source: _Spool | pa.Table  # the index file, or the rows themselves
    images: int
    regions: int
    labeled: int  # images whose status is "ok"
    held_in: tuple[str, ...]  # the shards holding them, in the order the keys reach them
    damaged: tuple[Damage, ...] = ()  # shards left out: their images file cannot be parsed

    @classmethod
    def load(cls, layout: RunLayout) -> LatestRows:
        """Every row group is decoded once here, to count: an index damaged inside is then
        found now, and rebuilt from the shards, not half-way through an export."""
        present = _shard_ids(layout)
        found = _index_file(layout, present)
        if found is not None and set(found[1]) == set(present):
            try:
                return cls._counted(_Spool(found[0]))
            except (pa.ArrowException, OSError, ValueError) as exc:
                log.warning("%s: unreadable (%s); rebuilding it from the shards", layout.index, exc)
                ledger = Ledger.load(layout, use_index=False)  # not read, nor warned of, again
                return cls._counted(ledger.images, ledger.damaged)
        ledger = Ledger.load(layout)
        return cls._counted(ledger.images, ledger.damaged)

    @classmethod
    def _counted(cls, source: _Spool | pa.Table, damaged: tuple[Damage, ...] = ()) -> LatestRows:
        images = regions = labeled = 0
        held: dict[str, None] = {}
        for batch in _batches(source, READ_COLUMNS):
            images += batch.num_rows
            regions += pc.sum(batch["region_count"]).as_py() or 0
            labeled += pc.sum(pc.equal(batch["status"], "ok")).as_py() or 0
            held.update(dict.fromkeys(pc.unique(batch["shard"]).to_pylist()))
        # Arrow's allocator keeps the pages it decoded into for reuse: at 10^6 rows, tens of
        # MB that the exports, which read shards, would not reuse.
        pa.default_memory_pool().release_unused()
        return cls(source, images, regions, labeled, tuple(held), damaged)

    def batches(self, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
        """The rows in key order, in batches of at most a row group of the index."""
        return _batches(self.source, columns)


class _Spool:
    """The index file's bytes on local disk, read back a row group at a time: held in memory
    for as long as the run is read, they were 13 MB of every export's memory at a million
    images. Each pass opens the file anew, so passes may interleave."""

    def __init__(self, data: bytes) -> None:
        # Closed, and so removed, when the rows are let go: a view may be read for hours.
        self.file = tempfile.NamedTemporaryFile(prefix="prelabel-index-", suffix=".parquet")  # noqa: SIM115
        self.file.write(data)
        self.file.flush()


def _batches(source: _Spool | pa.Table, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    if isinstance(source, pa.Table):
        yield from source.select(list(columns)).to_batches(_INDEX_ROWS)
        return
    # Decoded on this thread: the allocator gives back only the calling thread's pages.
    file = pq.ParquetFile(source.file.name)
    yield from file.iter_batches(_INDEX_ROWS, columns=list(columns), use_threads=False)


def quarantine(layout: RunLayout, damage: Damage) -> str:
    """Move the damaged shard's files aside, kept for inspection, with a note of why; its
    images are then missing from the ledger and get labeled again. Returns the folder."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    folder = layout.storage.join(layout.root, "quarantine", f"{damage.shard}-{stamp}")
    for kind, uri in (
        ("records", layout.records(damage.shard)),
        ("images", layout.images(damage.shard)),
    ):
        try:
            layout.storage.move(uri, layout.storage.join(folder, f"{kind}.parquet"))
        except NotFoundError:
            continue
    note = f"{damage.uri}: {damage.reason}\n".encode()
    layout.storage.write_atomic(layout.storage.join(folder, "reason.txt"), note)
    log.warning("%s: unreadable (%s); moved its shard to %s", damage.uri, damage.reason, folder)
    return folder


def _shard_ids(layout: RunLayout) -> tuple[str, ...]:
    folder = layout.storage.join(layout.root, "images")
    try:
        names = [item.key for item in layout.storage.list(folder)]
    except NotFoundError:
        return ()  # no images folder yet: a new run
    return tuple(
        sorted(name.removesuffix(".parquet") for name in names if _SHARD_FILE.fullmatch(name))
    )


def read_shard_file(
    layout: RunLayout, uri: str, schema: pa.Schema, columns: Sequence[str] | None = None
) -> pa.Table:
    """A shard file (only ``columns`` of it, if given); storage errors pass through (the run
    stops), a file that is there but does not parse is ``DamagedShardError``."""
    data = layout.storage.read(uri)
    try:
        return pq.read_table(pa.BufferReader(data), schema=schema, columns=columns)
    except (pa.ArrowException, OSError, ValueError) as exc:  # OSError: a page header or codec
        shard = _SHARD_FILE.search(uri)
        name = shard[0].removesuffix(".parquet") if shard else uri
        raise DamagedShardError(Damage(name, uri, str(exc).splitlines()[0])) from exc


def _read_index(layout: RunLayout, present: Sequence[str]) -> tuple[pa.Table, list[str]] | None:
    """The index, or None where it must be rebuilt (``_index_file``)."""
    found = _index_file(layout, present)
    if found is None:
        return None
    data, covered = found
    try:
        table = pq.read_table(pa.BufferReader(data), schema=INDEX_SCHEMA)
    except (pa.ArrowException, OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s); rebuilding it from the shards", layout.index, exc)
        return None
    return table.replace_schema_metadata(None), covered


def _index_file(layout: RunLayout, present: Sequence[str]) -> tuple[bytes, list[str]] | None:
    """The index file's bytes and the shards it holds, its footer checked; None where it must
    be rebuilt: missing, unreadable, of another schema, or naming a shard that is no longer
    there (its rows may hide older rows of the same keys)."""
    try:
        data = layout.storage.read(layout.index)
    except NotFoundError:
        return None
    try:
        schema = pq.read_schema(pa.BufferReader(data))
        covered = json.loads(schema.metadata[_COVERED])
        if not all(_has(schema, field) for field in INDEX_SCHEMA):
            raise ValueError("not an index of this prelabel version")
    except (pa.ArrowException, OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: unreadable (%s); rebuilding it from the shards", layout.index, exc)
        return None
    if not isinstance(covered, list) or not set(covered) <= set(present):
        return None
    return data, covered


def _has(schema: pa.Schema, field: pa.Field) -> bool:
    at = schema.get_field_index(field.name)
    return at >= 0 and bool(schema.field(at).type == field.type)


def _unique_sorted(images: pa.Table) -> bool:
    keys = images["key"].combine_chunks()
    return len(keys) < 2 or bool(pc.all(pc.less(keys[:-1], keys[1:])).as_py())


def _latest_per_key(images: pa.Table) -> pa.Table:
    """Shard ids sort by generation and one generation labels a key once, so a key's latest
    row is the one with the greatest shard id."""
    if not images.num_rows:
        return images
    ordered = images.sort_by([("key", "ascending"), ("shard", "descending")])
    keys = ordered["key"].combine_chunks()
    keep = pa.concat_arrays([pa.array([True]), pc.not_equal(keys[1:], keys[:-1])])
    return ordered.filter(keep).combine_chunks()
