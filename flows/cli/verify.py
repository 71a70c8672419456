"""``prelabel verify RUN``: read a run folder in full and say whether anything is wrong."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli.common import cannot_start, console
from pipeline.run.layout import RunLayout
from pipeline.run.verify import verify_run
from pipeline.storage import storage_for

EXIT_PROBLEMS = 1

app = typer.Typer()


@app.command("verify")
def verify_command(
    run: Annotated[str, typer.Argument(help="A run folder (local path or s3://bucket/prefix).")],
) -> None:
    """Check every shard file of a run folder: readable, images with their regions, orphans,
    the manifest up to date, a lease left by a killed run. Exit 0 when all is well, 1 when
    something is wrong (each problem says what a rerun does about it)."""
    try:
        health = verify_run(RunLayout(storage_for(run), run))
    except ValueError as exc:
        cannot_start(str(exc))
    console.print(
        f"{run}: {health.shards} shards, {health.images} images ({health.labeled} labeled, "
        f"{health.failed} failed), {health.regions} regions",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    for note in health.notes:
        console.print(f"  note: {note}", highlight=False, markup=False, soft_wrap=True)
    for problem in health.problems:
        console.print(f"  problem: {problem}", highlight=False, markup=False, soft_wrap=True)
    console.print("ok" if health.ok else f"{len(health.problems)} problems", highlight=False)
    if not health.ok:
        raise typer.Exit(EXIT_PROBLEMS)
