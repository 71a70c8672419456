"""An annotate run as plain functions: plan, process shards, finish. Prefect wires these same
functions into a flow; everything here runs and tests without it."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pipeline.config import RunConfig
from pipeline.errors import PrelabelError
from pipeline.formats import export, view_of
from pipeline.formats.label_studio import check_image_urls
from pipeline.labeling import coco_ahead, progress
from pipeline.labeling.classes import label_space
from pipeline.labeling.decode import IMAGE_EXTENSIONS, is_image_name
from pipeline.labeling.listing import Listing, image_listing
from pipeline.labeling.model_ids import model_info
from pipeline.labeling.shard_plan import Shard, ShardStats, plan_shards
from pipeline.labeling.tally import tally
from pipeline.retry import retrying
from pipeline.run.compact import compact
from pipeline.run.layout import RunLayout
from pipeline.run.lease import Lease, held_here, holding
from pipeline.run.lease import verify as verify_lease
from pipeline.run.ledger import DamagedShardError, Ledger, LedgerConflictError, quarantine
from pipeline.run.manifest import ModelInfo, RunManifest, code_version
from pipeline.storage import LocalStorage, NotFoundError, ObjectInfo, is_uri, storage_for

_EXTENSIONS = ", ".join(sorted(IMAGE_EXTENSIONS))


class RunError(PrelabelError):
    """The run cannot start (no images, unusable output); the message says why in one line."""


# Passes over a run folder in one run: a shard found damaged while finishing is moved aside
# and its images labeled again; a second damaged shard in a row means something keeps
# breaking files, and the run stops instead of looping.
REPAIR_PASSES = 2


@dataclass(frozen=True, slots=True)
class RunPlan:
    config: RunConfig
    lease: str  # the run folder's lease this run writes under
    shards: tuple[Shard, ...]  # only the images this pass labels
    images: int  # images in the source
    done: int  # of those, already labeled in the run folder under the same model and config
    skipped: int  # listed files that are not images by extension
    model: ModelInfo
    started_at: datetime
    # The run folder, resolved once by the plan for every step after it in this process
    # (shards resolve their own: they may run on another machine).
    layout: RunLayout
    repaired: tuple[str, ...] = ()  # damaged shards moved aside, each "file: reason"


@dataclass(frozen=True, slots=True)
class RunSummary:
    out: str
    images: int  # every image the run folder holds a row for
    labeled_now: int  # images this pass processed (labeled or failed)
    done_before: int  # images an earlier pass had already labeled, left as they were
    skipped: int  # files in the source that are not images by extension
    failed: tuple[tuple[str, str], ...]  # (key, reason)
    regions: int
    class_counts: dict[str, int]
    seconds: float
    exports: tuple[str, ...]
    shards: tuple[ShardStats, ...]  # this pass's shards
    engine: str | None  # what ran the forward here, and at which precision; None: nothing ran
    repaired: tuple[str, ...] = ()  # damaged shards moved aside and labeled again
    notes: tuple[str, ...] = ()  # what the user should know about the exports

    @property
    def labeled(self) -> int:
        return self.images - len(self.failed)

    @property
    def images_per_second(self) -> float:
        return self.labeled_now / self.seconds if self.seconds > 0 else 0.0

    def to_markdown(self) -> str:
        lines = [
            f"**{self.labeled}/{self.images} images labeled** ({self.labeled_now} this pass, "
            f"{self.done_before} already done), {self.regions} regions, {self.seconds:.1f} s "
            f"({self.images_per_second:.2f} img/s); run folder `{self.out}`",
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
    writable, the model loadable, the run folder free of another model's labels. Cheap: the
    listing stops at the first image, and the model stays cached for the run."""
    check_source(config)
    storage_for(config.out, config).ensure_writable(config.out)
    check_labels(config)


def check_source(config: RunConfig) -> None:
    listing = storage_for(config.source, config).list(config.source)
    if not any(is_image_name(item.key) for item in listing):
        raise RunError(f"{config.source}: no images found (looked for {_EXTENSIONS})")


def check_labels(config: RunConfig) -> None:
    """The model loads (or loaded before from the same bytes: ``labeling.model_ids``), and
    the run folder holds no labels of another model or config."""
    _check_ledger(Ledger.load(_layout(config)), config, _run_model(config).model_version)


@contextmanager
def run_lease(config: RunConfig) -> Iterator[Lease]:
    """Hold the run folder's lease: one run writes a folder at a time (``pipeline.run.lease``).
    Local folders this made and left empty (the run was refused before writing anything)
    are removed again."""
    layout = _layout(config)
    made = _missing_folders(Path(config.out)) if isinstance(layout.storage, LocalStorage) else []
    try:
        if not held_here(layout.lease):  # else the holder checked it already
            layout.storage.ensure_writable(config.out)
        with holding(layout.storage, layout.lease, timeout=config.lease_timeout) as lease:
            yield lease
    finally:
        for folder in made:  # deepest first; rmdir leaves any folder that holds something
            try:
                folder.rmdir()
            except OSError:
                break


def _missing_folders(path: Path) -> list[Path]:
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


# A listing made by a plan that found work, kept for the flow's own plan in this process
# under the same lease: a rerun with new images lists its source once, not twice.
_handed_over: dict[tuple[str, str], Listing] = {}


def plan_run(config: RunConfig, lease: str, *, hand_over: bool = False) -> RunPlan:
    """List the source, leave out what the run folder already holds and cut the rest into
    shards. The model is known by its identity (``labeling.model_ids``: a checkpoint that
    loaded once is known to load), not loaded: the shards load it where they run, and a plan
    over a million listed images holds the listing, not a model too. Damaged shard files are
    moved aside first, so their images count as not labeled."""
    started = datetime.now(UTC)
    layout = _layout(config)
    items = _handed_over.pop((lease, config.source), None)
    if items is None:
        listed = storage_for(config.source, config).list(config.source)
        items = image_listing(listed, inside_run(config.source, config.out))
    if not items:
        raise RunError(f"{config.source}: no images found (looked for {_EXTENSIONS})")
    model = _run_model(config)
    verify_lease(layout.storage, layout.lease, lease)
    ledger = Ledger.load(layout)
    damage = [*ledger.damaged, *ledger.damaged_files(layout)]
    for found in damage:
        quarantine(layout, found)
    if damage:
        ledger = Ledger.load(layout)
    ledger.save_index(layout)
    _check_ledger(ledger, config, model.model_version)
    todo = items.items(None if config.force else ledger.wanted(items.key, items.etag))
    shards = tuple(plan_shards(todo, config.shard_size, ledger.next_generation, lease))
    if hand_over and shards:
        _handed_over[(lease, config.source)] = items
    return RunPlan(
        config,
        lease,
        shards,
        len(items),
        len(items) - len(todo),
        items.skipped,
        model,
        started,
        layout,
        repaired=tuple(f"{d.uri}: {d.reason}" for d in damage),
    )


def finish_run(plan: RunPlan) -> RunSummary:
    """Derive the exports from the run folder's records (this pass and earlier ones), then
    write ``run.json`` last, so a run folder with a manifest is a finished run.

    Everything comes from the run folder, not from the shards' return values, so shards run
    by remote workers finish the same way. A records file found damaged here raises
    ``DamagedShardError`` after it is moved aside: the caller plans again."""
    config, layout = plan.config, plan.layout
    verify_lease(layout.storage, layout.lease, plan.lease)
    try:
        _maintain(layout, config)
        view = view_of(layout, plan.model, config.regions.background)
    except DamagedShardError as exc:
        quarantine(layout, exc.damage)
        raise
    notes = []
    if "label-studio" in config.exports:
        notice = check_image_urls(view, config.export_options)  # before anything is written
        notes += [notice] if notice else []
    exports = export(
        view, config.exports, config.export_options, coco_ahead=coco_ahead.take(plan.lease)
    )
    counted = tally(view, {s.shard_id for s in plan.shards})
    engine = ", ".join(counted.engines) or None  # what labeled this pass's images
    finished = datetime.now(UTC)
    empty = ShardStats("", 0, 0, 0, 0.0)
    shards = tuple(
        counted.shards.get(s.shard_id, dataclasses.replace(empty, shard_id=s.shard_id))
        for s in plan.shards
    )
    manifest = RunManifest(
        prelabel_version=code_version(),
        config=config.model_dump(mode="json"),
        model=plan.model,
        shards=counted.held_in,
        started_at=plan.started_at,
        finished_at=finished,
        images=counted.images,
        images_failed=len(counted.failed),
        regions=counted.regions,
        engine=engine or _recorded_engine(layout),
    )
    layout.storage.write_atomic(layout.manifest, manifest.model_dump_json(indent=2).encode())
    return RunSummary(
        out=config.out,
        images=counted.images,
        labeled_now=sum(s.images for s in shards),
        done_before=plan.done,
        skipped=plan.skipped,
        failed=counted.failed,
        regions=counted.regions,
        class_counts=counted.class_counts,
        seconds=(finished - plan.started_at).total_seconds(),
        exports=exports,
        shards=shards,
        engine=engine,
        repaired=plan.repaired,
        notes=tuple(notes),
    )


def _maintain(layout: RunLayout, config: RunConfig) -> None:
    """Small shards compacted and the index brought up to date, so that the exports and the
    next run read few files; the exports then read the index's few columns they need."""
    ledger = Ledger.load(layout)
    if ledger.damaged:
        return  # view_of raises for it
    compact(layout, ledger, config.shard_size).save_index(layout)


def finish_if_done(config: RunConfig, lease: str) -> RunSummary | None:
    """A rerun with nothing to label, finished here: the exports and ``run.json`` from the
    records, with no flow to start for it. None when there is work (or a damaged shard,
    which the run repairs by labeling its images again). A first run or a forced one has
    work by definition: it is not planned here, so its source is listed once, by the flow."""
    layout = _layout(config)
    if config.force or not retrying(lambda: layout.storage.exists(layout.manifest)):
        return None
    plan = retrying(lambda: plan_run(config, lease, hand_over=True))
    if plan.shards:
        return None
    try:
        return retrying(lambda: finish_run(plan))
    except DamagedShardError:
        return None


def annotate(config: RunConfig) -> RunSummary:
    """The whole run in this process, without Prefect."""
    from pipeline.labeling.shards import (
        process_shard,  # the labeling code (torch): only runs need it
    )

    with ExitStack() as stack:
        lease = retrying(lambda: stack.enter_context(run_lease(config)))
        for _ in range(REPAIR_PASSES):
            plan = retrying(lambda: plan_run(config, lease.token))
            progress.started(plan.images - plan.done)
            for shard in plan.shards:
                retrying(lambda: process_shard(shard, config))  # noqa: B023  (called at once)
            try:
                return retrying(lambda: finish_run(plan))  # noqa: B023  (called at once)
            except DamagedShardError as exc:
                damaged = exc
        raise damaged


def _run_model(config: RunConfig) -> ModelInfo:
    """The model as the run records it: its identity, and the run's classes (the model's,
    or what --class-map and --classes make of them; a name it lacks is refused here)."""
    info = model_info(config)
    space = label_space(
        info.class_names,
        keep=config.classes,
        rename=config.class_map,
        background=config.regions.background,
    )
    return info.model_copy(update={"class_names": space.names})


def _recorded_engine(layout: RunLayout) -> str | None:
    """What labeled the run folder's images, as its manifest says: a pass that labels
    nothing keeps it."""
    try:
        data = layout.storage.read(layout.manifest)
    except NotFoundError:
        return None
    return RunManifest.model_validate_json(data).engine


def _layout(config: RunConfig) -> RunLayout:
    return RunLayout(storage_for(config.out, config), config.out)


def _check_ledger(ledger: Ledger, config: RunConfig, model_version: str) -> None:
    try:
        ledger.check(model_version=model_version, config_hash=config.labeling_hash, out=config.out)
    except LedgerConflictError as exc:
        raise RunError(str(exc)) from exc


def inside_run(source: str, out: str) -> Callable[[ObjectInfo], bool]:
    """Whether a listed item lies in the run folder, when the run folder is inside the source
    folder: its own PNG masks are not images to label. The two folders are resolved once,
    not each of a million listed paths: listed URIs are the source path joined with keys."""
    if is_uri(source) or is_uri(out):
        prefix = out.rstrip("/") + "/"
        return lambda item: item.uri.startswith(prefix)
    root, run = Path(source).resolve(), Path(out).resolve()
    if run != root and root not in run.parents:
        return lambda item: False
    prefix = str(Path(source) / run.relative_to(root)) + os.sep
    return lambda item: item.uri.startswith(prefix)
