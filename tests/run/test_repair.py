"""A run folder that went bad: damaged shard files are named, moved aside and their images
labeled again; `prelabel verify` reports the state; nothing unreadable is taken for "empty"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import RunConfig
from pipeline.formats import ExportOptions, export, open_run
from pipeline.labeling.annotate import RunSummary, annotate
from pipeline.run.layout import RunLayout
from pipeline.run.ledger import DamagedShardError, Ledger
from pipeline.storage import LocalStorage, NotFoundError
from tests.helpers import assert_same_labels, make_images

SHARD = "shard-0000-00001"


def _run(source: Path, out: Path) -> RunSummary:
    return annotate(
        RunConfig(source=str(source), out=str(out), device="cpu", shard_size=3, batch_size=2)
    )


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "200"},
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Source images and a clean run over them."""
    root = tmp_path_factory.mktemp("repair")
    make_images(root / "in", 8, seed=21)
    _run(root / "in", root / "clean")
    return root / "in", root / "clean"


@pytest.fixture
def run(reference: tuple[Path, Path], tmp_path: Path) -> Path:
    """A copy of the clean run, to break."""
    out = tmp_path / "run"
    subprocess.run(["cp", "-r", str(reference[1]), str(out)], check=True)
    return out


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("kind", ["images", "records"])
def test_a_truncated_shard_file_is_moved_aside_and_its_images_labeled_again(
    kind: str, reference: tuple[Path, Path], run: Path
) -> None:
    damaged = run / kind / f"{SHARD}.parquet"
    _truncate(damaged)
    broken = damaged.read_bytes()
    summary = _run(reference[0], run)
    assert summary.labeled_now == 3  # the shard's images, and only those
    assert len(summary.repaired) == 1 and summary.repaired[0].startswith(f"{damaged}: ")
    (kept,) = (run / "quarantine").iterdir()
    assert kept.name.startswith(f"{SHARD}-")
    assert (kept / f"{kind}.parquet").read_bytes() == broken  # kept as it was found
    assert str(damaged) in (kept / "reason.txt").read_text()
    assert not damaged.exists()
    assert_same_labels(run, reference[1])


def test_a_records_file_damaged_inside_is_found_at_the_finish_and_repaired(
    reference: tuple[Path, Path], run: Path
) -> None:
    """The file still ends like Parquet, so only reading it shows the damage."""
    path = run / "records" / f"{SHARD}.parquet"
    data = bytearray(path.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little")
    data[4 : -8 - footer] = bytes(len(data) - 12 - footer)  # the pages zeroed, the footer kept
    path.write_bytes(bytes(data))
    summary = _run(reference[0], run)
    assert summary.labeled_now == 3
    assert len(list((run / "quarantine").iterdir())) == 1
    assert_same_labels(run, reference[1])


def test_export_and_verify_name_the_damaged_file_and_change_nothing(run: Path) -> None:
    damaged = run / "records" / f"{SHARD}.parquet"
    _truncate(damaged)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(DamagedShardError, match=str(damaged)):
        export(open_run(str(run)), ["coco"], ExportOptions())
    exported = _cli("export", str(run), "--format", "coco")
    assert exported.returncode == 2 and "Traceback" not in exported.stderr
    assert f"{damaged}: unreadable (" in exported.stderr
    assert len(exported.stderr.strip().splitlines()) == 1
    checked = _cli("verify", str(run))
    assert checked.returncode == 1, checked.stderr
    assert f"problem: {damaged}: unreadable (" in checked.stderr
    assert "Traceback" not in checked.stderr
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_verify_passes_a_healthy_run_and_finds_what_a_crash_leaves(run: Path) -> None:
    healthy = _cli("verify", str(run))
    assert healthy.returncode == 0, healthy.stderr
    assert "3 shards, 8 images (8 labeled, 0 failed)" in healthy.stderr
    assert healthy.stderr.strip().endswith("ok")
    # A shard that stopped between its two writes, and a run that never wrote its manifest.
    (run / "images" / f"{SHARD}.parquet").unlink()
    manifest = json.loads((run / "run.json").read_text())
    crashed = _cli("verify", str(run))
    assert crashed.returncode == 1
    assert "note: 1 records files without an images file" in crashed.stderr
    assert f"says {manifest['images']} images" in crashed.stderr
    assert _cli("verify", str(run.parent / "nothing")).returncode == 2


def test_only_a_missing_images_folder_is_a_new_run(tmp_path: Path) -> None:
    assert Ledger.load(RunLayout(LocalStorage(), str(tmp_path / "new"))).shards == ()
    with pytest.raises(NotFoundError):
        list(LocalStorage().list(str(tmp_path / "new")))
