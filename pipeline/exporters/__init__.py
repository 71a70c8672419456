"""Exports derived from a run's records: one module per format, one registry here."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pipeline.exporters.coco import export_coco
from pipeline.exporters.cvat import export_cvat
from pipeline.exporters.label_studio import export_label_studio
from pipeline.exporters.masks import export_masks
from pipeline.exporters.parquet import export_parquet
from pipeline.exporters.view import ExportError, ExportOptions, RunView, open_run, view_of

__all__ = [
    "EXPORTERS",
    "ExportError",
    "ExportOptions",
    "RunView",
    "check_formats",
    "export",
    "open_run",
    "view_of",
]

Exporter = Callable[[RunView, ExportOptions], tuple[str, ...]]

EXPORTERS: dict[str, Exporter] = {
    "coco": export_coco,
    "label-studio": export_label_studio,
    "masks": export_masks,
    "cvat": export_cvat,
    "parquet": export_parquet,
}


def check_formats(formats: Sequence[str]) -> None:
    unknown = [f for f in formats if f not in EXPORTERS]
    if unknown:
        raise ExportError(
            f"unknown export format {unknown[0]!r}; choose from {', '.join(EXPORTERS)}"
        )


def export(view: RunView, formats: Sequence[str], options: ExportOptions) -> tuple[str, ...]:
    """Write each format in turn; returns the URIs written."""
    check_formats(formats)
    return tuple(uri for name in formats for uri in EXPORTERS[name](view, options))
