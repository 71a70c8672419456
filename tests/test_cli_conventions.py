"""What a newcomer expects of any command line: a version, and nothing left behind by a
command that refused to start."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

PRELABEL = [sys.executable, "-c", "from flows.cli import app; app()"]
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


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
