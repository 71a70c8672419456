"""What every exporter reads: a run's model, class names and labels, shard by shard."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from pipeline.errors import PrelabelError
from pipeline.run.layout import RunLayout
from pipeline.run.ledger import Damage, DamagedShardError, LatestRows, read_shard_file
from pipeline.run.manifest import ModelInfo, RunManifest
from pipeline.run.tables import IMAGES_SCHEMA, REGIONS_SCHEMA
from pipeline.storage import NotFoundError, is_uri, storage_for


class ExportError(PrelabelError):
    """An export that cannot be written (no finished run, a bad label map); one line why."""


class ExportOptions(BaseModel):
    """Choices that change how an export looks, not what the labels are."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ls_regions: Literal["polygon", "brush"] = "polygon"  # Label Studio result type
    # Label Studio's image URL: prefix + key; or /data/local-files/?d= + the path under this
    # folder, Label Studio's LOCAL_FILES_DOCUMENT_ROOT; neither: the source URI.
    image_url_prefix: str | None = None
    local_files_root: str | None = None
    wkb: bool = False  # parquet: add a WKB geometry column with GeoParquet metadata
    # Label Studio: tasks in files of at most this many (label-studio/tasks-NNNNN.json), for
    # runs too large to import as one file; None: one label-studio.json
    ls_split: int | None = Field(default=None, ge=1)

    @field_validator("local_files_root")
    @classmethod
    def _local_folder(cls, value: str | None) -> str | None:
        """Absolute and normalised as Label Studio joins it, so that paths compare as there."""
        if value is None:
            return None
        if is_uri(value):
            raise ValueError("give the local folder Label Studio serves files from, not a URL")
        return posixpath.normpath(Path(value).expanduser().absolute())

    @model_validator(mode="after")
    def _one_url_kind(self) -> ExportOptions:
        """Worded with the field names, listed in ``fields``, so that a command line names
        its flags (flows.cli.common.describe)."""
        if self.image_url_prefix is not None and self.local_files_root is not None:
            raise PydanticCustomError(
                "two_image_url_kinds",
                "image_url_prefix and local_files_root both given; image URLs take one of them",
                {"fields": ("image_url_prefix", "local_files_root")},
            )
        return self


REGION_COLUMNS: tuple[str, ...] = tuple(REGIONS_SCHEMA.names)


@dataclass(frozen=True, slots=True)
class Part:
    """Consecutive images of a run in key order, with their regions: what an export writes at a
    time, so its memory is one shard's whatever the size of the run."""

    images: pa.Table  # full image rows (``IMAGES_SCHEMA``), ok and failed
    regions: pa.Table  # their regions (the columns asked for), in key, then region order

    def ok_images(self) -> list[dict[str, Any]]:
        return [row for row in self.images.to_pylist() if row["status"] == "ok"]

    def regions_of(self) -> RegionRows:
        """Image id -> its region rows, in region order; images without regions are absent."""
        return RegionRows(self.regions)


class RegionRows:
    """A part's region rows by image, each image's made into Python objects when asked for.

    A shard's polygons as Python floats are tens of MB at once; one image's are a few hundred
    KB (the CVAT writer over 240 shards of the 10^6 run: 370 MiB peak before, 260 after)."""

    def __init__(self, regions: pa.Table) -> None:
        self._regions = regions
        self._spans: dict[str, tuple[int, int]] = {}
        ids = regions.column("image_id").to_pylist()
        starts = [i for i in range(len(ids)) if i == 0 or ids[i] != ids[i - 1]]
        for start, end in zip(starts, [*starts[1:], len(ids)][: len(starts)], strict=True):
            self._spans[ids[start]] = (start, end)

    def get(
        self, image_id: str, default: list[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        span = self._spans.get(image_id)
        if span is None:
            return [] if default is None else default
        rows: list[dict[str, Any]] = self._regions.slice(span[0], span[1] - span[0]).to_pylist()
        return rows


class RunView:
    """A run's model, class names and labels; the labels are read shard by shard (``parts``).

    ``images`` and ``regions`` hold the whole run at once, for readers that need it whole."""

    def __init__(
        self, layout: RunLayout, model: ModelInfo, background: int | None, rows: LatestRows
    ) -> None:
        self.layout = layout
        self.model = model
        self.background = background  # the class that has no regions, left out of label lists
        self.rows = rows  # every image's latest row, read as the parts are

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.model.class_names

    @property
    def image_count(self) -> int:
        return self.rows.images

    @property
    def region_count(self) -> int:
        return self.rows.regions

    def parts(self, regions: Sequence[str] | None = REGION_COLUMNS) -> Iterator[Part]:
        """The run in key order, shard by shard (``iter_parts``)."""
        return iter_parts(self.layout, self.rows.batches(("image_id", "shard")), regions)

    @cached_property
    def images(self) -> pa.Table:
        """Every image's latest full row (ok and failed), in key order."""
        tables = [part.images for part in self.parts(regions=None)]
        return pa.concat_tables(tables) if tables else IMAGES_SCHEMA.empty_table()

    @cached_property
    def regions(self) -> pa.Table:
        """The regions of those rows, in key order, then region order."""
        tables = [part.regions for part in self.parts()]
        return pa.concat_tables(tables) if tables else REGIONS_SCHEMA.empty_table()

    def ok_images(self) -> list[dict[str, Any]]:
        return [row for row in self.images.to_pylist() if row["status"] == "ok"]


def iter_parts(
    layout: RunLayout,
    rows: Iterable[pa.RecordBatch],
    regions: Sequence[str] | None = REGION_COLUMNS,
) -> Iterator[Part]:
    """The images of ``rows`` (the ``image_id`` and ``shard`` of key-sorted latest rows, in
    batches) in key order, in runs of images whose rows share a shard file. A shard is read
    when its first image comes up, and let go once the key order passes its last row, so a
    run labeled in one pass holds one shard at a time (a run of several passes, one per
    pass). ``regions``: the region columns to read; None reads no records file."""
    open_shards: dict[str, _OpenShard] = {}
    for shard, image_ids in _runs(rows):
        if shard not in open_shards:
            open_shards[shard] = _OpenShard.read(layout, shard, regions)
        part = open_shards[shard].take(image_ids)
        yield part
        # Every later image sorts after this one: a shard whose rows all sort up to it
        # holds none of them (rows after its last image here are superseded ones).
        passed = part.images["key"][-1].as_py()
        done = [name for name, held in open_shards.items() if held.last_key <= passed]
        for name in done:
            del open_shards[name]
        if done:
            # Arrow's allocator keeps freed pages for reuse, and shards differ in size: the
            # pages kept would add up over thousands of shards, so they go back now.
            pa.default_memory_pool().release_unused()


def _runs(batches: Iterable[pa.RecordBatch]) -> Iterator[tuple[str, pa.Array]]:
    """(shard, image ids) of each run of consecutive rows in one shard, across batches."""
    shard: str | None = None
    pending: list[pa.Array] = []
    for batch in batches:
        shards, ids = batch["shard"], batch["image_id"]
        if not batch.num_rows:
            continue
        changes = pc.not_equal(shards.slice(1), shards.slice(0, len(shards) - 1))
        starts = [0, *(np.flatnonzero(changes.to_numpy(zero_copy_only=False)) + 1).tolist()]
        for begin, end in zip(starts, [*starts[1:], batch.num_rows], strict=True):
            name = shards[begin].as_py()
            if name != shard and pending:
                yield str(shard), pa.concat_arrays(pending)
                pending = []
            shard = name
            pending.append(ids.slice(begin, end - begin))
    if pending:
        yield str(shard), pa.concat_arrays(pending)


class _OpenShard:
    """One shard's images sorted by key and their regions grouped by image, handed out in
    runs as the run's key order reaches them; rows the run does not ask for (superseded by a
    later pass) are skipped."""

    def __init__(self, uri: str, images: pa.Table, regions: pa.Table, offsets: Any) -> None:
        self.uri, self.images, self.regions, self.offsets = uri, images, regions, offsets
        self.last_key = str(images["key"][-1].as_py()) if images.num_rows else ""

    @classmethod
    def read(cls, layout: RunLayout, shard: str, columns: Sequence[str] | None) -> _OpenShard:
        uri = layout.images(shard)
        images = read_shard_file(layout, uri, IMAGES_SCHEMA).sort_by("key")
        if columns is None:
            offsets = np.zeros(images.num_rows + 1, np.int64)
            return cls(uri, images, REGIONS_SCHEMA.empty_table(), offsets)
        wanted = list(dict.fromkeys(["image_id", "region_index", *columns]))
        regions = read_shard_file(layout, layout.records(shard), REGIONS_SCHEMA, wanted)
        rank = pc.index_in(regions["image_id"], images["image_id"]).combine_chunks()
        ranks = rank.to_numpy(zero_copy_only=False)
        if rank.null_count or not _in_order(ranks, regions["region_index"]):
            # Rows of no image in the shard, or written out of order: filtering and sorting
            # copy every column, polygons included, so only then.
            regions = regions.append_column("_rank", rank).filter(pc.is_valid(rank))
            regions = regions.sort_by([("_rank", "ascending"), ("region_index", "ascending")])
            ranks = regions["_rank"].to_numpy()
        counts = np.bincount(ranks.astype(np.intp), minlength=images.num_rows)
        return cls(uri, images, regions.select(list(columns)), np.r_[0, np.cumsum(counts)])

    def take(self, image_ids: pa.Array) -> Part:
        """These images (key order) and their regions: slices where they are consecutive in
        the shard, as in a run labeled in one pass; copies where superseded rows lie between."""
        found = pc.index_in(image_ids, self.images["image_id"])
        if found.null_count:
            missing = image_ids.filter(found.is_null())[0].as_py()
            shard = posixpath.basename(self.uri).removesuffix(".parquet")
            reason = f"no row for image {missing}, which the index lists"
            raise DamagedShardError(Damage(shard, self.uri, reason))
        at = found.to_numpy(zero_copy_only=False)
        first, last = int(at[0]), int(at[-1])
        if last - first + 1 == len(at):
            low, high = int(self.offsets[first]), int(self.offsets[last + 1])
            return Part(self.images.slice(first, len(at)), self.regions.slice(low, high - low))
        starts, ends = self.offsets[at], self.offsets[at + 1]
        rows = np.concatenate([np.arange(b, e) for b, e in zip(starts, ends, strict=True)])
        return Part(self.images.take(at), self.regions.take(rows))


def _in_order(ranks: np.ndarray[Any, Any], region_index: pa.ChunkedArray) -> bool:
    """Whether rows already run by image rank, then region index: how a shard writes them."""
    if len(ranks) < 2:
        return True
    step = np.diff(ranks)
    if (step < 0).any():
        return False
    index = region_index.to_numpy()
    return bool((np.diff(index)[step == 0] > 0).all())


def view_of(layout: RunLayout, model: ModelInfo, background: int | None) -> RunView:
    """Raises ``DamagedShardError`` for the first shard file that cannot be parsed: an export
    that left its images out would look complete and not be."""
    rows = LatestRows.load(layout)
    if rows.damaged:
        raise DamagedShardError(rows.damaged[0])
    view = RunView(layout, model, background, rows)
    check_label_map(view)
    return view


def open_run(out: str) -> RunView:
    """A finished run folder, as ``annotate`` left it."""
    layout, manifest = _finished(out)
    return view_of(layout, manifest.model, manifest.config.regions.background)


def recorded_formats(out: str) -> tuple[str, ...]:
    """The formats a finished run was made to write (its config's ``exports``), so that a plain
    ``prelabel export RUN`` writes them again; coco where it recorded none."""
    _, manifest = _finished(out)
    return manifest.config.exports or ("coco",)


def _finished(out: str) -> tuple[RunLayout, RunManifest]:
    layout = RunLayout(storage_for(out), out)
    try:
        manifest = RunManifest.model_validate_json(layout.storage.read(layout.manifest))
    except NotFoundError as exc:  # any other failure to read says why in its own words
        raise ExportError(f"{out}: not a finished run folder (no run.json)") from exc
    except ValidationError as exc:
        raise ExportError(f"{layout.manifest}: not a prelabel run manifest") from exc
    return layout, manifest


def check_label_map(view: RunView) -> None:
    """Names unique and non-empty, every region's class and box inside the label map and image:
    checked over the whole run before any export is written, so none stops half-way."""
    names = view.class_names
    if not names or any(not name.strip() for name in names):
        raise ExportError(f"{view.layout.root}: class names must be non-empty, got {list(names)}")
    if len(set(names)) != len(names):
        raise ExportError(f"{view.layout.root}: class names are not unique: {list(names)}")
    for part in view.parts(regions=("image_id", "class_id", "bbox")):
        _check_regions(view, part)


def _check_regions(view: RunView, part: Part) -> None:
    """Column-wise: a run holds hundreds of regions per image."""
    regions, names = part.regions, view.class_names
    if not regions.num_rows:
        return
    class_ids = regions.column("class_id").to_numpy()
    boxes = np.asarray(pc.list_flatten(regions.column("bbox")).to_numpy()).reshape(-1, 4)
    index = pc.index_in(regions.column("image_id"), value_set=part.images.column("image_id"))
    found = index.is_valid().to_numpy(zero_copy_only=False)
    rows = index.fill_null(0).to_numpy()
    widths = part.images.column("width").fill_null(0).to_numpy()[rows]
    heights = part.images.column("height").fill_null(0).to_numpy()[rows]
    x, y, w, h = boxes.T
    bad_class = (class_ids < 0) | (class_ids >= len(names))
    bad_box = ~found | (x < 0) | (y < 0) | (w <= 0) | (h <= 0)
    bad_box |= (x + w > widths) | (y + h > heights)
    for i in np.flatnonzero(bad_class | bad_box)[:1].tolist():
        image_id = regions.column("image_id")[i].as_py()
        if bad_class[i]:
            raise ExportError(
                f"{view.layout.root}: region of image {image_id} has class id "
                f"{class_ids[i]}, outside the {len(names)} classes"
            )
        raise ExportError(
            f"{view.layout.root}: region of image {image_id} has box {boxes[i].tolist()} "
            f"outside the {widths[i]}x{heights[i]} image"
        )
