"""``prelabel`` and ``python -m flows``.

The CLI is imported when the command runs, not when this module is: region-tracing workers
are spawned processes that re-import the entry script, and this keeps torch and Prefect out
of them (they start in a fraction of a second instead of several)."""

from __future__ import annotations


def main() -> None:
    from flows.cli import app

    app()


if __name__ == "__main__":
    main()
