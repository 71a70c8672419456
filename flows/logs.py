"""Where a command's logs go: a file per run, the terminal only for what a person must see.

Prefect logs every task's state, and a failed task's traceback, to the terminal; a user who
mistyped a bucket name should read one line, not a traceback. Everything is written to a log
file instead (named in failure messages); ``--verbose`` shows it on the terminal as well.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from pipeline.config import default_cache_dir

# What a person must see while a run works, even without --verbose: a lease taken over, a
# damaged shard moved aside, an engine that cannot load. One line each, no traceback.
_NOTICES = ("pipeline.run.lease", "pipeline.run.ledger", "pipeline.labeling.models")
# Loggers Prefect gives handlers of their own instead of letting them reach the root.
_OWN_HANDLERS = ("prefect._internal", "uvicorn", "fastapi")


KEEP = 100  # log files kept; older ones are removed as new ones are made


def log_file(command: str) -> Path:
    """A new log file under ``$XDG_CACHE_HOME/prelabel/logs`` (``~/.cache`` by default); only
    the newest ``KEEP`` are kept."""
    folder = default_cache_dir() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    for old in sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime)[: -KEEP + 1]:
        old.unlink(missing_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return folder / f"{command}-{stamp}-{os.getpid()}.log"


def send_logs_to(path: Path, console: Console, *, verbose: bool) -> None:
    """Route every log record to ``path``; on the terminal, everything with ``verbose``, else
    only the notices. Call after Prefect has set up its logging (on import)."""
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    to_terminal = logging.StreamHandler(console.file)
    to_terminal.setFormatter(logging.Formatter("prelabel: %(message)s"))
    if not verbose:
        to_terminal.setLevel(logging.WARNING)
        to_terminal.addFilter(lambda record: record.name.startswith(_NOTICES))
    root = logging.getLogger()
    root.handlers = [to_file, to_terminal]
    root.setLevel(logging.INFO)
    for name in _OWN_HANDLERS:
        logging.getLogger(name).handlers = [to_file]
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request to the server
