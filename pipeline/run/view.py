"""What every exporter reads: a run's model, class names and merged tables, never the model."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from pipeline.errors import PrelabelError
from pipeline.run.layout import RunLayout
from pipeline.run.ledger import DamagedShardError, Ledger
from pipeline.run.manifest import ModelInfo, RunManifest
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


@dataclass(frozen=True, slots=True)
class RunView:
    layout: RunLayout
    model: ModelInfo
    background: int | None  # the class that has no regions, left out of label lists
    images: pa.Table  # every image's latest row (ok and failed), in key order
    regions: pa.Table  # the regions of those rows, in key order, then region order

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.model.class_names

    def ok_images(self) -> list[dict[str, Any]]:
        return [row for row in self.images.to_pylist() if row["status"] == "ok"]


def view_of(layout: RunLayout, model: ModelInfo, background: int | None) -> RunView:
    """Raises ``DamagedShardError`` for the first shard file that cannot be parsed: an export
    that left its images out would look complete and not be."""
    ledger = Ledger.load(layout)
    if ledger.damaged:
        raise DamagedShardError(ledger.damaged[0])
    view = RunView(layout, model, background, ledger.images, ledger.regions(layout))
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
    """Names unique and non-empty, every region's class and box inside the label map and image."""
    names = view.class_names
    if not names or any(not name.strip() for name in names):
        raise ExportError(f"{view.layout.root}: class names must be non-empty, got {list(names)}")
    if len(set(names)) != len(names):
        raise ExportError(f"{view.layout.root}: class names are not unique: {list(names)}")
    regions = view.regions
    if not regions.num_rows:
        return
    # Column-wise: a run holds hundreds of regions per image.
    class_ids = regions.column("class_id").to_numpy()
    boxes = np.asarray(pc.list_flatten(regions.column("bbox")).to_numpy()).reshape(-1, 4)
    index = pc.index_in(regions.column("image_id"), value_set=view.images.column("image_id"))
    found = index.is_valid().to_numpy(zero_copy_only=False)
    rows = index.fill_null(0).to_numpy()
    widths = view.images.column("width").fill_null(0).to_numpy()[rows]
    heights = view.images.column("height").fill_null(0).to_numpy()[rows]
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
