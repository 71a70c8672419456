"""``prelabel report RUN``: the static HTML review page of a finished run."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from flows.cli.common import cannot_start, console
from pipeline.formats import open_run
from pipeline.review.report import DEFAULT_LIMIT, write_report

app = typer.Typer()


@app.command("report")
def report_command(
    run: Annotated[str, typer.Argument(help="A finished run folder.")],
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            "-o",
            help="Page to write (default RUN/exports/report.html); its thumbnails and "
            "full-size views go in a folder named like it, next to it.",
        ),
    ] = None,
    source_images: Annotated[
        bool,
        typer.Option(
            "--source-images/--no-source-images",
            help="Paint overlays on the original images (read again from their URIs) or on grey.",
        ),
    ] = True,
    limit: Annotated[
        int,
        typer.Option(
            help="Show this many labeled images, the most doubtful first, and as many of those "
            "listed apart."
        ),
    ] = DEFAULT_LIMIT,
) -> None:
    """Write a static HTML review page: images by review priority, with class overlays, figures,
    per-class counts and the failed images; images of one class over the whole image listed
    apart; each thumbnail opens the image full size. The pages run no script."""
    start = time.perf_counter()
    try:
        report = write_report(open_run(run), page=out, source_images=source_images, limit=limit)
    except (OSError, ValueError) as exc:
        cannot_start(str(exc))
    console.print(f"wrote {report.page}", highlight=False, markup=False, soft_wrap=True)
    console.print(
        f"{report.shown} of {report.labeled} labeled images shown ({report.one_class} of one "
        f"class over the whole image, listed apart), {report.failed} failed; "
        f"{report.notes} without their original or thumbnail "
        f"({time.perf_counter() - start:.1f} s)",
        highlight=False,
        markup=False,
    )
