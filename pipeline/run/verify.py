"""The health of a run folder, read in full: what ``prelabel verify`` reports.

``annotate`` repairs what it finds as it plans (a damaged shard is moved aside and its images
labeled again); this reads every file to the end, so it also finds damage that a truncated
copy's last bytes do not show, and says what a rerun would do about it.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from pipeline.errors import PrelabelError
from pipeline.run.layout import RunLayout
from pipeline.run.lease import LeaseInfo
from pipeline.run.ledger import Ledger
from pipeline.run.manifest import RunManifest
from pipeline.run.tables import REGIONS_SCHEMA
from pipeline.storage import NotFoundError

_SHARD = re.compile(r"(shard-\d{4}-\d{5})\.parquet")
_RERUN = "`prelabel annotate` on this folder labels them again"


@dataclass
class Health:
    """Counts, plus problems (something is wrong: the command exits non-zero) and notes."""

    shards: int = 0  # shards with a readable images file
    images: int = 0  # images with a row (latest per key)
    labeled: int = 0  # of those, status ok
    failed: int = 0
    regions: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_run(layout: RunLayout) -> Health:
    health = Health()
    ledger = Ledger.load(layout, use_index=False)  # every shard, as it is on disk
    if not (ledger.shards or ledger.damaged or layout.storage.exists(layout.manifest)):
        raise PrelabelError(f"{layout.root}: not a run folder (no shard files, no run.json)")
    for damage in ledger.damaged:
        health.problems.append(f"{damage.uri}: unreadable ({damage.reason}); {_RERUN}")
    health.shards = len(ledger.shards)
    images = ledger.images
    health.images = images.num_rows
    statuses = Counter(images.column("status").to_pylist())
    health.labeled, health.failed = statuses["ok"], health.images - statuses["ok"]
    expected = dict(
        zip(
            images.column("image_id").to_pylist(),
            images.column("region_count").to_pylist(),
            strict=True,
        )
    )
    shard_of = dict(
        zip(images.column("image_id").to_pylist(), images.column("shard").to_pylist(), strict=True)
    )
    found: Counter[str] = Counter()
    unreadable = set()
    for shard in ledger.shards:
        records = _records(layout, shard, health)
        if records is None:
            unreadable.add(shard)
            continue
        ids = records.column("image_id").to_pylist()
        found.update(i for i in ids if shard_of.get(i) == shard)
    mismatched = [
        i for i, count in expected.items() if found[i] != count and shard_of[i] not in unreadable
    ]
    if mismatched:
        health.problems.append(
            f"{len(mismatched)} images whose regions on disk differ from their row's count; "
            f"{_RERUN} with --force"
        )
    health.regions = sum(found.values())
    _orphans(layout, ledger, health)
    _manifest(layout, health)
    _lease(layout, health)
    return health


def _records(layout: RunLayout, shard: str, health: Health) -> pa.Table | None:
    uri = layout.records(shard)
    try:
        data = layout.storage.read(uri)
    except NotFoundError:
        health.problems.append(f"{uri}: missing, though its images file is there; {_RERUN}")
        return None
    try:
        return pq.read_table(io.BytesIO(data), schema=REGIONS_SCHEMA)
    except (pa.ArrowException, OSError, ValueError) as exc:  # OSError: a page header or codec
        reason = str(exc).splitlines()[0]
        health.problems.append(f"{uri}: unreadable ({reason}); {_RERUN}")
        return None


def _orphans(layout: RunLayout, ledger: Ledger, health: Health) -> None:
    """Records files with no images file: a shard that stopped between its two writes. Nothing
    reads them; the next pass of that generation overwrites them."""
    folder = layout.storage.join(layout.root, "records")
    try:
        names = [info.key for info in layout.storage.list(folder)]
    except NotFoundError:
        return
    known = set(ledger.shards) | {d.shard for d in ledger.damaged}
    orphans = [n for n in names if (m := _SHARD.fullmatch(n)) and m[1] not in known]
    if orphans:
        health.notes.append(
            f"{len(orphans)} records files without an images file (a shard that stopped "
            f"between its two writes; nothing reads them): {', '.join(orphans[:3])}"
        )
    quarantine = layout.storage.join(layout.root, "quarantine")
    try:
        moved = {info.key.split("/")[0] for info in layout.storage.list(quarantine)}
    except NotFoundError:
        return
    if moved:
        health.notes.append(f"{len(moved)} damaged shards kept aside in {quarantine}")


def _manifest(layout: RunLayout, health: Health) -> None:
    try:
        manifest = RunManifest.model_validate_json(layout.storage.read(layout.manifest))
    except NotFoundError:
        health.problems.append(
            f"{layout.manifest}: missing: no run has finished here; rerun `prelabel annotate`"
        )
        return
    except ValidationError:
        health.problems.append(f"{layout.manifest}: not a prelabel run manifest")
        return
    if (manifest.images, manifest.regions) != (health.images, health.regions):
        health.problems.append(
            f"{layout.manifest}: says {manifest.images} images and {manifest.regions} regions, "
            f"the shards hold {health.images} and {health.regions}: a later run did not finish; "
            "rerun `prelabel annotate` to bring the exports up to date"
        )


def _lease(layout: RunLayout, health: Health) -> None:
    try:
        data = layout.storage.read(layout.lease)
    except NotFoundError:
        return
    try:
        holder = LeaseInfo.model_validate_json(data)
    except ValidationError:
        health.notes.append(f"{layout.lease}: not a lease; the next run replaces it")
        return
    health.notes.append(
        f"being written by {holder.describe()}, last renewed {holder.renewed_at:%H:%M:%S} UTC "
        "(a run that was killed leaves this until the next run takes it over)"
    )
