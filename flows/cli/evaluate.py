"""``prelabel evaluate``: a run's pre-labels against reviewed labels, by model version."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from flows.cli.common import cannot_start, console
from pipeline.formats import open_run
from pipeline.quality.evaluate import (
    EVALUATIONS,
    Evaluation,
    evaluate_runs,
    model_label,
    percent,
)
from pipeline.quality.truth import open_truth

_LISTED = 20  # failures printed; the evaluation's per-image outcomes file lists them all

app = typer.Typer()


@app.command("evaluate")
def evaluate_command(
    run: Annotated[str, typer.Argument(help="A finished run folder.")],
    truth: Annotated[
        str,
        typer.Option(
            "--truth", help="Reviewed labels: a masks folder (masks export layout) or COCO JSON."
        ),
    ],
    boundary_tolerance: Annotated[
        int, typer.Option(help="Pixels a boundary may be off and still count as found.")
    ] = 2,
    compare: Annotated[
        list[str] | None,
        typer.Option(
            "--compare",
            help="Another run folder of the same images by another model (repeat): evaluated "
            "too, and shown side by side.",
        ),
    ] = None,
) -> None:
    """Score RUN's pre-labels against the reviewed labels in --truth.

    Writes evaluations/<model_version>.json and .md in the run folder (and in each --compare
    folder); the markdown shows every model version evaluated against the same truth.
    """
    try:
        views = [open_run(folder) for folder in (run, *(compare or ()))]
        evaluations = evaluate_runs(views, open_truth(truth), tolerance=boundary_tolerance)
    except ValueError as exc:
        cannot_start(str(exc))
    _print(evaluations)
    for view in views:
        storage, version = view.layout.storage, view.model.model_version
        uri = storage.join(view.layout.root, EVALUATIONS, f"{version}.md")
        console.print(f"wrote {uri}", highlight=False, markup=False, soft_wrap=True)


def _print(evaluations: list[Evaluation]) -> None:
    first = evaluations[0]
    table = Table(title=escape(f"prelabel evaluate against {first.truth}"), title_justify="left")
    table.add_column("")
    for e in evaluations:
        table.add_column(escape(model_label(e)), justify="right")
    rows = [
        ("images scored", [str(e.images) for e in evaluations]),
        ("mIoU", [percent(e.miou) for e in evaluations]),
        ("pixel accuracy", [percent(e.pixel_accuracy) for e in evaluations]),
        (
            f"boundary F1 ({first.boundary_tolerance} px)",
            [percent(e.boundary_f1) for e in evaluations],
        ),
        ("pixels changed", [percent(e.changed_share) for e in evaluations]),
        ("regions added", [str(e.regions_added) for e in evaluations]),
        ("regions removed", [str(e.regions_removed) for e in evaluations]),
        *(
            (escape(f"IoU {name}"), [percent(e.iou.get(name)) for e in evaluations])
            for name in first.class_names
        ),
        ("failed", [str(e.failed) for e in evaluations]),
        ("without truth", [str(e.missing) for e in evaluations]),
    ]
    for label, cells in rows:
        table.add_row(label, *cells)
    console.print(table)
    for e in evaluations:
        for failure in e.failed_shown[:_LISTED]:
            console.print(
                f"  not scored ({model_label(e)}): {failure.key}: {failure.reason}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
        if e.failed > _LISTED:
            console.print(
                f"  ... {e.failed - _LISTED} more failed, listed in {e.run}/{e.per_image}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
        if e.missing:
            shown = ", ".join(e.missing_shown[:5]) + (" ..." if e.missing > 5 else "")
            console.print(
                f"  {e.missing} images without truth ({model_label(e)}): {shown}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
