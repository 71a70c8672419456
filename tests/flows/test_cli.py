"""The command line as a user meets it: exit codes, one-line reasons, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deeplab.scenes import scenes
from tests.runs import write_run

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
            "--batch-size 0: must be greater than or equal to 1",
        ),
        (
            ["annotate", "{tmp}/one", "--out", "{tmp}/run", "--instances", "polygons"],
            "--instances 'polygons': must be 'components' or 'semantic'",
        ),
        (
            ["annotate", "{tmp}/one", "--out", "{tmp}/run", "--output-stride", "12"],
            "--output-stride 12: must be 8, 16 or 32",
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


def test_export_writes_formats_from_the_records(tmp_path: Path) -> None:
    class_map = np.zeros((20, 30), np.uint8)
    class_map[3:9, 4:12] = 2
    write_run(tmp_path / "run", {"a.png": class_map})
    (tmp_path / "run" / "exports" / "coco.json").unlink(missing_ok=True)
    result = _run("export", str(tmp_path / "run"), "--format", "coco", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    coco = json.loads((tmp_path / "run" / "exports" / "coco.json").read_text())
    assert [a["bbox"] for a in coco["annotations"]] == [[4.0, 3.0, 8.0, 6.0]]


@pytest.mark.parametrize(
    ("formats", "written"),
    [
        (["masks", "label-studio"], {"masks", "label-studio.json", "label-config.xml"}),
        (None, {"coco.json"}),  # a run that recorded none
    ],
)
def test_export_without_format_writes_the_formats_the_run_was_made_with(
    tmp_path: Path, formats: list[str] | None, written: set[str]
) -> None:
    write_run(tmp_path / "run", {"a.png": np.zeros((4, 4), np.uint8)}, source="/srv/photos")
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    if formats is not None:
        manifest["config"]["exports"] = formats
    (tmp_path / "run" / "run.json").write_text(json.dumps(manifest))
    result = _run("export", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in (tmp_path / "run" / "exports").iterdir()} == written
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    if "label-studio.json" in written:  # tasks that point at /srv/photos/a.png: said once
        (note,) = notes
        assert "/srv/photos/a.png" in note
        assert "--image-url-prefix" in note and "--local-files-root" in note
    else:
        assert not notes


def test_export_local_files_urls_are_under_the_root_given(tmp_path: Path) -> None:
    write_run(
        tmp_path / "run", {"a b.png": np.zeros((4, 4), np.uint8)}, source=str(tmp_path / "pics")
    )
    args = ("export", str(tmp_path / "run"), "-f", "label-studio", "--local-files-root", ".")
    result = _run(*args, cwd=tmp_path)  # a relative root: from where the command runs
    assert result.returncode == 0, result.stderr
    assert "note:" not in result.stderr
    (task,) = json.loads((tmp_path / "run" / "exports" / "label-studio.json").read_text())
    assert task["data"]["image"] == "/data/local-files/?d=pics/a%20b.png"


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["export", "{tmp}/run", "--format", "pdf"], "unknown export format 'pdf'"),
        (["export", "{tmp}", "--format", "coco"], "not a finished run folder"),
        (["annotate", "{tmp}/in", "--out", "{tmp}/x", "--export", "pdf"], "unknown export"),
        (
            ["export", "{tmp}/run", "-f", "coco", "-f", "label-studio", "--local-files-root", "/x"],
            "--local-files-root /x: image /data/images/a.png is not under it",
        ),
        (
            ["export", "{tmp}/run", "--local-files-root", "s3://b/p"],
            "--local-files-root 's3://b/p': give the local folder",
        ),
        (
            ["export", "{tmp}/run", "--image-url-prefix", "http://x/", "--local-files-root", "/"],
            "--image-url-prefix and --local-files-root both given",
        ),
        (["export", "{tmp}/run", "--ls-regions", "poly"], "--ls-regions 'poly': must be"),
    ],
)
def test_export_mistakes_say_why_exit_2(tmp_path: Path, args: list[str], reason: str) -> None:
    write_run(tmp_path / "run", {"a.png": np.zeros((4, 4), np.uint8)})
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "a.png")
    result = _run(*(a.format(tmp=tmp_path) for a in args), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and reason in lines[0], result.stderr
    assert not (tmp_path / "run" / "exports").exists()  # refused before any format is written


def test_export_help_shows_the_default_formats(tmp_path: Path) -> None:
    result = _run("export", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "the formats the run was made with, else coco" in " ".join(result.stdout.split())
