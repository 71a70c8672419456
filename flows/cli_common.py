"""What every ``prelabel`` command shares: the console, exit codes, one-line refusals."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

# 0: every image labeled; 3: some images failed (listed); 2: the command could not start.
EXIT_CANNOT_START, EXIT_SOME_FAILED = 2, 3

console = Console(stderr=True)


def cannot_start(reason: str) -> NoReturn:
    console.print(f"[bold red]prelabel: cannot start:[/] {reason}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_CANNOT_START)


def describe(error: object) -> str:
    loc = ".".join(str(p) for p in error["loc"])  # type: ignore[index]
    return f"{loc}: {error['msg']}"  # type: ignore[index]
