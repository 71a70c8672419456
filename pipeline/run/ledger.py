"""The run folder as a ledger: which images are labeled, under which model and config.

Shard files are append-only. Every annotate pass over a folder is a new generation
(``shard-GGGG-NNNNN``); an image's row in a later shard supersedes its earlier rows, and the
regions that count are those of the shard holding its latest row. The images file of a shard is
written after its records file, so an images row always has its regions on disk: a crash between
the two leaves an unreferenced records file that nothing reads.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import PrelabelError
from pipeline.run.layout import RunLayout
from pipeline.run.tables import IMAGES_SCHEMA, REGIONS_SCHEMA
from pipeline.storage import NotFoundError, ObjectInfo

_SHARD_FILE = re.compile(r"shard-(\d{4})-\d{5}\.parquet")
_PARQUET_MAGIC = b"PAR1"  # a Parquet file's last four bytes, after its footer's length

log = logging.getLogger(__name__)


class LedgerConflictError(PrelabelError):
    """The run folder holds labels from another model or config; mixing them would be wrong."""


@dataclass(frozen=True, slots=True)
class _Entry:
    etag: str
    status: str
    retryable: bool


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
    """The latest row per image key, and the shard files that hold them."""

    images: pa.Table  # latest row per key, sorted by key
    shards: tuple[str, ...]  # every shard with a readable images file, in generation order
    damaged: tuple[Damage, ...] = ()  # shards whose images file cannot be parsed, left out

    @classmethod
    def load(cls, layout: RunLayout) -> Ledger:
        """Every shard's images file. A listing or read that fails raises: taking a run folder
        that could not be read for an empty one would label everything again over it."""
        tables, shards, damaged = [], [], []
        for shard in _shard_ids(layout):
            try:
                tables.append(_read(layout, layout.images(shard), IMAGES_SCHEMA))
                shards.append(shard)
            except DamagedShardError as exc:
                damaged.append(exc.damage)
        every = pa.concat_tables(tables) if tables else IMAGES_SCHEMA.empty_table()
        return cls(images=_latest_per_key(every), shards=tuple(shards), damaged=tuple(damaged))

    def damaged_records(self, layout: RunLayout) -> list[Damage]:
        """Shards whose records file is missing or does not end as a Parquet file does (a
        truncated copy): found from each file's last bytes, without reading the rest."""
        found = []
        for shard in self.shards:
            uri = layout.records(shard)
            try:
                tail = layout.storage.read_tail(uri, 8)
            except NotFoundError:
                found.append(Damage(shard, uri, "missing"))
                continue
            if len(tail) < 8 or tail[4:] != _PARQUET_MAGIC:
                found.append(Damage(shard, uri, "truncated: no Parquet footer"))
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

    def todo(self, items: Iterable[ObjectInfo]) -> list[ObjectInfo]:
        """Images that are new, changed since they were labeled, or failed for a reason outside
        the file; an image that failed as bad input is not retried until its bytes change."""
        done = {
            row["key"]: _Entry(row["etag"], row["status"], row["retryable"])
            for row in self.images.select(["key", "etag", "status", "retryable"]).to_pylist()
        }
        return [
            item
            for item in items
            if (entry := done.get(item.key)) is None
            or entry.etag != item.etag
            or (entry.status != "ok" and entry.retryable)
        ]

    def regions(self, layout: RunLayout) -> pa.Table:
        """The regions of each image's latest row, in key order, then region order."""
        order = {key: n for n, key in enumerate(self.images.column("key").to_pylist())}
        winners: dict[str, list[str]] = {}
        for image_id, shard in zip(
            self.images.column("image_id").to_pylist(),
            self.images.column("shard").to_pylist(),
            strict=True,
        ):
            winners.setdefault(shard, []).append(image_id)
        parts = []
        for shard, image_ids in winners.items():
            table = _read(layout, layout.records(shard), REGIONS_SCHEMA)
            parts.append(table.filter(pc.is_in(table.column("image_id"), pa.array(image_ids))))
        if not parts:
            return REGIONS_SCHEMA.empty_table()
        regions = pa.concat_tables(parts)
        key_of = dict(
            zip(
                self.images.column("image_id").to_pylist(),
                self.images.column("key").to_pylist(),
                strict=True,
            )
        )
        rank = pa.array([order[key_of[i]] for i in regions.column("image_id").to_pylist()])
        return (
            regions.append_column("_rank", rank)
            .sort_by([("_rank", "ascending"), ("region_index", "ascending")])
            .drop_columns(["_rank"])
        )


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


def _read(layout: RunLayout, uri: str, schema: pa.Schema) -> pa.Table:
    """A shard file; storage errors pass through (the run stops), a file that is there but
    does not parse is ``DamagedShardError``."""
    data = layout.storage.read(uri)
    try:
        return pq.read_table(io.BytesIO(data), schema=schema)
    except (pa.ArrowException, OSError, ValueError) as exc:  # OSError: a page header or codec
        shard = _SHARD_FILE.search(uri)
        name = shard[0].removesuffix(".parquet") if shard else uri
        raise DamagedShardError(Damage(name, uri, str(exc).splitlines()[0])) from exc


def _latest_per_key(images: pa.Table) -> pa.Table:
    """Rows come in generation order, so the last row of each key is the latest."""
    keys = images.column("key").to_pylist()
    last = {key: n for n, key in enumerate(keys)}
    return images.take(pa.array(sorted(last.values(), key=lambda n: keys[n]), pa.int64()))
