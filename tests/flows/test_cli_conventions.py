"""What a newcomer expects of any command line: a version, and nothing left behind by a
command that refused to start."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

PRELABEL = [sys.executable, "-c", "from flows.cli import app; app()"]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _prelabel(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PRELABEL, *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_version_is_the_installed_one_on_stdout() -> None:
    done = _prelabel("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"prelabel {metadata.version('prelabel')}\n"


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--model", "{tmp}/nothing.pth"], "cannot read checkpoint"),  # refused under the lease
        (["--batch-size", "0"], "--batch-size 0"),  # refused before it
    ],
)
def test_a_run_refused_at_the_start_leaves_no_folder(
    tmp_path: Path, args: list[str], reason: str
) -> None:
    out = tmp_path / "new" / "run"
    filled = [a.format(tmp=tmp_path) for a in args]
    done = _prelabel("annotate", str(EXAMPLES), "--out", str(out), *filled)
    assert done.returncode == 2 and reason in done.stderr, done.stderr
    assert not (tmp_path / "new").exists()


def test_a_refused_run_leaves_a_folder_that_was_there(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    done = _prelabel("annotate", str(EXAMPLES), "--out", str(out), "--model", "nothing.pth")
    assert done.returncode == 2, done.stderr
    assert out.is_dir()


@pytest.mark.slow
def test_a_rerun_with_nothing_to_label_needs_no_prefect_server(tmp_path: Path) -> None:
    """The first run labels; the rerun finds every image done and finishes without a flow:
    pointed at a Prefect server that does not exist, it still succeeds."""
    source = tmp_path / "in"
    source.mkdir()
    for name in ("scene-000.jpg", "scene-001.jpg"):
        (source / name).write_bytes((EXAMPLES / name).read_bytes())
    out = tmp_path / "run"
    first = _prelabel("annotate", str(source), "--out", str(out), "--export", "coco")
    assert first.returncode == 0, first.stderr
    (out / "exports" / "coco.json").unlink()
    rerun = subprocess.run(
        [*PRELABEL, "annotate", str(source), "--out", str(out), "--export", "coco"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"},  # nothing listens
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "0 processed, 2 already done" in rerun.stderr
    assert (out / "exports" / "coco.json").is_file()  # the exports are written again


def test_every_annotate_option_shows_its_default() -> None:
    import typer
    from typer.core import TyperOption

    from flows.cli import app

    annotate = typer.main.get_command(app).commands["annotate"]  # type: ignore[attr-defined]
    silent = [
        param.name
        for param in annotate.params
        if isinstance(param, TyperOption)
        and not (param.required or param.is_flag or param.show_default or param.default is not None)
    ]
    assert silent == []
