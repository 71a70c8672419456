"""What every exporter reads: a run's model, class names and merged tables, never the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.ledger import Ledger
from pipeline.run_folder import ModelInfo, RunLayout, RunManifest
from pipeline.storage import StorageError, storage_for


class ExportError(Exception):
    """An export that cannot be written (no finished run, a bad label map); one line why."""


class ExportOptions(BaseModel):
    """Choices that change how an export looks, not what the labels are."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ls_regions: Literal["polygon", "brush"] = "polygon"  # Label Studio result type
    image_url_prefix: str | None = None  # Label Studio image = prefix + key; else the source URI
    wkb: bool = False  # parquet: add a WKB geometry column with GeoParquet metadata


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
    ledger = Ledger.load(layout)
    view = RunView(layout, model, background, ledger.images, ledger.regions(layout))
    check_label_map(view)
    return view


def open_run(out: str) -> RunView:
    """A finished run folder, as ``annotate`` left it."""
    layout = RunLayout(storage_for(out), out)
    try:
        manifest = RunManifest.model_validate_json(layout.storage.read(layout.manifest))
    except StorageError as exc:
        raise ExportError(f"{out}: not a finished run folder (no readable run.json)") from exc
    except ValidationError as exc:
        raise ExportError(f"{layout.manifest}: not a prelabel run manifest") from exc
    regions = manifest.config.get("regions")
    background = regions.get("background", 0) if isinstance(regions, dict) else 0
    return view_of(layout, manifest.model, background if isinstance(background, int) else None)


def check_label_map(view: RunView) -> None:
    """Names unique and non-empty, every region's class and box inside the label map and image."""
    names = view.class_names
    if not names or any(not name.strip() for name in names):
        raise ExportError(f"{view.layout.root}: class names must be non-empty, got {list(names)}")
    if len(set(names)) != len(names):
        raise ExportError(f"{view.layout.root}: class names are not unique: {list(names)}")
    size = {
        row["image_id"]: (row["width"], row["height"])
        for row in view.images.select(["image_id", "width", "height"]).to_pylist()
    }
    for row in view.regions.select(["image_id", "class_id", "bbox"]).to_pylist():
        if not 0 <= row["class_id"] < len(names):
            raise ExportError(
                f"{view.layout.root}: region of image {row['image_id']} has class id "
                f"{row['class_id']}, outside the {len(names)} classes"
            )
        x, y, w, h = row["bbox"]
        width, height = size[row["image_id"]]
        if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > width or y + h > height:
            raise ExportError(
                f"{view.layout.root}: region of image {row['image_id']} has box {row['bbox']} "
                f"outside the {width}x{height} image"
            )
