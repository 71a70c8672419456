"""``prelabel``: the command line, a thin layer over the flows; one module per command group.

Exit codes: 0 every image labeled, 3 some images failed (listed), 2 the run could not start.
A user's mistake gets one line naming what is wrong, never a traceback: every error a user
can act on is a ``PrelabelError`` (or the model library's ``CheckpointError`` and
``EngineError``), and this is the one place that turns it into that line.
"""

from __future__ import annotations

from importlib import metadata
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from deeplab.errors import CheckpointError, EngineError
from flows.cli import annotate, evaluate, exports, models, report, review, train, verify
from flows.cli.common import refused
from pipeline.errors import PrelabelError

_USER_ERRORS = (PrelabelError, CheckpointError, EngineError)


class _Commands(TyperGroup):
    def invoke(self, ctx: Any) -> Any:  # click's Context, which typer vendors privately
        try:
            return super().invoke(ctx)
        except _USER_ERRORS as exc:
            refused(exc)


app = typer.Typer(
    cls=_Commands,
    add_completion=False,
    no_args_is_help=True,
    # Plain help: the rich one labels every flag "<bool>" and hides "--x/--no-x".
    rich_markup_mode=None,
    help=(
        "Pre-label a folder or bucket of images for semantic segmentation with DeepLabV3+, "
        "then review the labels instead of drawing them.\n\n"
        "Exit codes: 0 all done, 3 some images failed (listed), 2 could not start."
    ),
)


def _version(asked: bool) -> None:
    if asked:
        typer.echo(f"prelabel {metadata.version('prelabel')}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Pre-label images for semantic segmentation with DeepLabV3+."""


for group in (annotate, exports, report, review, evaluate, train, verify, models):
    app.add_typer(group.app)
