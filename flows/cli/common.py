"""What every ``prelabel`` command shares: the console, exit codes, one-line refusals."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

import typer
from pydantic_core import ErrorDetails
from rich.console import Console
from rich.markup import escape

# 0: every image labeled; 3: some images failed (listed); 2: the command could not start.
EXIT_CANNOT_START, EXIT_SOME_FAILED = 2, 3

console = Console(stderr=True)

# The flag of annotate (deploy and serve share --model and --device) that sets each RunConfig
# field, by field path, so that a refusal names the flag the user typed.
RUN_FLAGS = {
    "model": "--model",
    "device": "--device",
    "batch_size": "--batch-size",
    "max_side": "--max-side",
    "shard_size": "--shard-size",
    "workers": "--workers",
    "exports": "--export",
    "precision": "--precision",
    "output_stride": "--output-stride",
    "large_images": "--large-images",
    "tile_size": "--tile-size",
    "regions.instances": "--instances",
    "regions.min_area": "--min-area",
    "force": "--force",
    "compile": "--compile",
    "engine": "--engine",
    "classes": "--classes",
    "class_map": "--class-map",
}
# pydantic's wording before a validator's own message, which already says what is wrong.
_PREFIXES = {"value_error": "Value error, ", "assertion_error": "Assertion failed, "}


def cannot_start(reason: str) -> NoReturn:
    """``reason`` is plain text: it quotes what the user typed, where ``[x]`` is no markup."""
    console.print(
        f"[bold red]prelabel: cannot start:[/] {escape(reason)}", highlight=False, soft_wrap=True
    )
    raise typer.Exit(EXIT_CANNOT_START)


def refused(exc: Exception) -> NoReturn:
    """An error the user can act on, as one line; its exit code where it carries one."""
    console.print(
        f"[bold red]prelabel: cannot start:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
    )
    raise typer.Exit(getattr(exc, "exit_code", EXIT_CANNOT_START))


def stopped(reason: str) -> NoReturn:
    """A run that started and could not go on (a full disk, a refused write): exit 2 as for a
    refusal, since nothing was half-written and a rerun resumes."""
    console.print(
        f"[bold red]prelabel: stopped:[/] {escape(reason)}", highlight=False, soft_wrap=True
    )
    raise typer.Exit(EXIT_CANNOT_START)


def flags_given(values: Mapping[str, Any], under: str = "") -> dict[str, str]:
    """Field path -> flag, for the RUN_FLAGS among ``values`` (field -> value the flags gave,
    a nested model's as a dict)."""
    given: dict[str, str] = {}
    for field, value in values.items():
        path = under + field
        if isinstance(value, Mapping):
            given |= flags_given(value, path + ".")
        elif value is not None and path in RUN_FLAGS:
            given[path] = RUN_FLAGS[path]
    return given


def option_flags(fields: Iterable[str]) -> dict[str, str]:
    """Field -> flag for a command whose options are its config's fields by typer's naming
    (``class_weights`` -> ``--class-weights``), so that ``describe`` names the flag."""
    return {field: "--" + field.replace("_", "-") for field in fields}


def describe(
    error: ErrorDetails, flags: Mapping[str, str] | None = None, env_prefix: str = ""
) -> str:
    """One validation error as the user would say it: a field set by a flag is named by it
    (``--batch-size 0``), one set by a variable under ``env_prefix`` by it
    (``PRELABEL_BATCH_SIZE=0``), any other by its path (``steps``).

    A check across fields (no location) that lists the fields it names in its context under
    ``fields`` has those words named too, so its message says what to change.
    """
    flags = flags or {}
    message = error["msg"].removeprefix(_PREFIXES.get(error["type"], ""))
    message = re.sub(r"^Input should be\b", "must be", message)  # the user's words, not pydantic's
    path = [str(part) for part in error["loc"]]
    if not path:
        fields = (error.get("ctx") or {}).get("fields", ())
        if not fields:
            return message
        words = re.compile(r"\b(" + "|".join(map(re.escape, fields)) + r")\b")
        return words.sub(lambda m: _named(m[1], flags, env_prefix), message)
    environment = {name.upper() for name in os.environ} if env_prefix else set()
    for end in range(len(path), 0, -1):
        flag = flags.get(".".join(path[:end]))
        if flag is not None:
            return f"{flag} {_shown(error['input'])}: {message}"
        variable = env_prefix + "__".join(path[:end]).upper()
        if variable in environment:
            inner = " " + ".".join(path[end:]) if end < len(path) else ""
            return f"{variable}{inner}={_shown(error['input'])}: {message}"
    return f"{'.'.join(path)}: {message}"


def _named(field: str, flags: Mapping[str, str], env_prefix: str) -> str:
    """A field in a message about several: by the flag that set it, else by its variable (the
    one that set it or, the field left at its default, the one that would change it)."""
    if field in flags:
        return flags[field]
    return env_prefix + field.replace(".", "__").upper() if env_prefix else field


def _shown(value: object) -> str:
    """A value as typed: numbers bare, text quoted (so that an empty one shows)."""
    if isinstance(value, str) and not re.fullmatch(r"[+-]?[0-9]+(\.[0-9]*)?", value):
        return repr(value)
    return str(value)
