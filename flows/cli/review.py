"""``prelabel push`` and ``prelabel pull``: a run's pre-labels to Label Studio, reviews back.

The API token comes from the environment only, so it is never in the shell history, the
process list, or anything these commands print.
"""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError

from flows.cli.common import cannot_start, console, describe, option_flags
from pipeline.formats import ExportOptions, open_run
from pipeline.formats.label_studio import check_image_urls
from pipeline.review.label_studio_api import (
    TOKEN_VARIABLES,
    LabelStudio,
    token_from_env,
)
from pipeline.review.sync import pull, push

_URL_HELP = f"Label Studio's address, e.g. http://localhost:8080 (token: ${TOKEN_VARIABLES[0]})."

app = typer.Typer()


@app.command("push")
def push_command(
    run: Annotated[str, typer.Argument(help="A finished run folder.")],
    label_studio: Annotated[str, typer.Option("--label-studio", help=_URL_HELP)],
    project: Annotated[str, typer.Option(help="Project title; created if there is none.")],
    image_url_prefix: Annotated[
        str | None, typer.Option(help="Image URL = prefix + key (else the source URI).")
    ] = None,
    local_files_root: Annotated[
        str | None,
        typer.Option(
            metavar="DIR",
            help="Image URL = /data/local-files/?d= + the image's path under DIR, "
            "Label Studio's LOCAL_FILES_DOCUMENT_ROOT.",
        ),
    ] = None,
    ls_regions: Annotated[
        str, typer.Option(help="polygon (brush where needed) or brush.")
    ] = "polygon",
) -> None:
    """Send a run's pre-labels to a Label Studio project as tasks with predictions.

    Pushing again adds nothing twice; a newer run replaces the predictions of tasks nobody
    has annotated yet, and leaves annotated ones alone.
    """
    try:
        options = ExportOptions(
            ls_regions=ls_regions,
            image_url_prefix=image_url_prefix,
            local_files_root=local_files_root,
        )
    except ValidationError as exc:
        flags = option_flags(["ls_regions", "image_url_prefix", "local_files_root"])
        cannot_start("; ".join(describe(e, flags) for e in exc.errors()))
    view = open_run(run)
    notice = check_image_urls(view, options)  # an image outside the root: nothing sent
    with LabelStudio(label_studio, token_from_env()) as client:
        summary = push(client, view, project, options)
    console.print(
        f"pushed {run} to project {project!r} (id {summary.project_id}): "
        f"{summary.created} created, {summary.updated} updated, {summary.unchanged} unchanged, "
        f"{summary.skipped} skipped (annotated)",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    if notice is not None:
        console.print(f"note: {notice}", highlight=False, markup=False, soft_wrap=True)


@app.command("pull")
def pull_command(
    label_studio: Annotated[str, typer.Option("--label-studio", help=_URL_HELP)],
    project: Annotated[str, typer.Option(help="Project title.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Folder for the masks.")],
) -> None:
    """Bring a project's reviewed annotations back as class masks, in the masks export's
    layout; tasks nobody has annotated are left out."""
    with LabelStudio(label_studio, token_from_env()) as client:
        summary = pull(client, project, out)
    console.print(
        f"pulled {summary.masks} masks from project {project!r} (id {summary.project_id}) "
        f"to {out}; {summary.unannotated} tasks without annotations skipped"
        + (f", {summary.foreign} tasks not from prelabel left out" if summary.foreign else ""),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
