"""The command line as a user meets it: exit codes, one-line reasons, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from deeplab.scenes import scenes

PRELABEL = [sys.executable, "-c", "from flows.cli import app; app()"]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "200"}
    return subprocess.run(
        [*PRELABEL, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_a_bad_file_is_reported_and_the_rest_labeled_exit_3(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    for i, scene in enumerate(scenes(3, 3, height=96, width=128)):
        Image.fromarray(scene.image).save(source / f"ok-{i}.jpg")
    (source / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = _run(
        "annotate", str(source), "--out", str(tmp_path / "run"), "--device", "cpu", cwd=Path.cwd()
    )
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "images labeled │ 3/4" in result.stderr
    assert f"{source / 'truncated.jpg'}: not" in result.stderr
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["images_failed"] == 1


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["annotate", "{tmp}/missing", "--out", "{tmp}/run"], "missing: not a folder"),
        (["annotate", "{tmp}/empty", "--out", "{tmp}/run"], "empty: no images found"),
        (
            ["annotate", "{tmp}/empty", "--out", "{tmp}/run", "--batch-size", "0"],
            "batch_size: Input should be greater than or equal to 1",
        ),
        (
            ["annotate", "{tmp}/one", "--out", "{tmp}/run", "--model", "{tmp}/one/a.png"],
            "a.png: not a checkpoint",
        ),
        (
            ["annotate", "{tmp}/one", "--out", "{tmp}/one/a.png/run"],
            "cannot create the output folder",
        ),
    ],
)
def test_a_run_that_cannot_start_says_why_in_one_line_exit_2(
    tmp_path: Path, args: list[str], reason: str
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "one").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "a.png")
    result = _run(*(a.format(tmp=tmp_path) for a in args), cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prelabel: cannot start: ")
    assert reason in lines[0]
