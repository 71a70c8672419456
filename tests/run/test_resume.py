"""Reruns and crashes: the run folder as a ledger. Nothing is labeled twice, nothing is lost,
and a run killed mid-way and re-run ends with the records of a run that never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from deeplab.scenes import scenes
from pipeline.config import RunConfig
from pipeline.geometry.policy import RegionPolicy
from pipeline.labeling.annotate import RunError, RunSummary, annotate
from pipeline.run.layout import RunLayout
from pipeline.run.ledger import Ledger, LedgerConflictError
from pipeline.storage import LocalStorage, StorageError
from tests.helpers import assert_same_labels, comparable, make_images, merged


def run(source: Path, out: Path, **fields: object) -> RunSummary:
    settings: dict[str, object] = {"device": "cpu", "shard_size": 3, "batch_size": 2, **fields}
    return annotate(RunConfig(source=str(source), out=str(out), **settings))


def shard_files(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "images").iterdir())


@pytest.fixture
def source(tmp_path: Path) -> Path:
    make_images(tmp_path / "in", 7)
    return tmp_path / "in"


def test_rerun_with_nothing_changed_labels_nothing_and_keeps_exports(
    source: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    first = run(source, out)
    coco = (out / "exports" / "coco.json").read_bytes()
    files = shard_files(out)
    second = run(source, out)
    assert (first.labeled_now, first.done_before) == (7, 0)
    assert (second.labeled_now, second.done_before, second.images) == (0, 7, 7)
    assert shard_files(out) == files  # no new shard written
    assert (out / "exports" / "coco.json").read_bytes() == coco
    assert second.regions == first.regions and second.class_counts == first.class_counts


def test_one_changed_image_is_relabeled_alone_and_others_keep_their_ids(
    source: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    run(source, out)
    before_images, before_regions = merged(out)
    changed = source / "img-03.png"
    Image.fromarray(next(scenes(999, 1, height=96, width=128)).image).save(changed)
    make_images(tmp_path / "extra", 1, seed=77)
    (tmp_path / "extra" / "img-00.png").rename(source / "new.png")
    summary = run(source, out)
    assert (summary.labeled_now, summary.done_before, summary.images) == (2, 6, 8)
    assert shard_files(out)[-1] == "shard-0001-00000.parquet"
    images, regions = merged(out)
    rows = {r["key"]: r for r in images.to_pylist()}
    old = {r["key"]: r for r in before_images.to_pylist()}
    assert rows["img-03.png"]["content_hash"] != old["img-03.png"]["content_hash"]
    assert rows["img-03.png"]["shard"] == "shard-0001-00000"
    assert {k for k, r in rows.items() if r["shard"].startswith("shard-0001")} == {
        "img-03.png",
        "new.png",
    }
    # Regions of unchanged images keep their ids; the changed image's old regions are gone.
    changed_id = rows["img-03.png"]["image_id"]
    keep = [r["region_id"] for r in before_regions.to_pylist() if r["image_id"] != changed_id]
    now = regions.to_pylist()
    assert [
        r["region_id"]
        for r in now
        if r["image_id"] != changed_id
        and r["image_id"] in {x["image_id"] for x in before_images.to_pylist()}
    ] == keep
    assert not set(keep) & {r["region_id"] for r in now if r["image_id"] == changed_id}
    coco = json.loads((out / "exports" / "coco.json").read_text())
    assert len(coco["images"]) == 8 and len(coco["annotations"]) == regions.num_rows


def test_force_relabels_everything_with_the_same_ids(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(source, out)
    coco = (out / "exports" / "coco.json").read_bytes()
    images, regions = merged(out)
    summary = run(source, out, force=True)
    assert (summary.labeled_now, summary.done_before) == (7, 0)
    again_images, again_regions = merged(out)
    assert set(again_images.column("shard").to_pylist()) == {
        "shard-0001-00000",
        "shard-0001-00001",
        "shard-0001-00002",
    }
    assert comparable(again_images) == comparable(images)
    assert again_regions.equals(regions)
    assert (out / "exports" / "coco.json").read_bytes() == coco


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"regions": RegionPolicy(min_area=4)}, "another labeling config"),
        ({"max_side": 64}, "another labeling config"),
        ({"output_stride": 8}, "another model"),  # same weights, other outputs
    ],
)
def test_a_rerun_under_another_config_is_refused(
    source: Path, tmp_path: Path, fields: dict[str, object], message: str
) -> None:
    out = tmp_path / "run"
    run(source, out)
    files = shard_files(out)
    with pytest.raises(RunError, match=message) as caught:
        run(source, out, **fields)
    assert "new --out" in str(caught.value)
    assert shard_files(out) == files


def test_another_model_is_refused(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(source, out)
    layout = RunLayout(LocalStorage(), str(out))
    ledger = Ledger.load(layout)
    with pytest.raises(LedgerConflictError, match=r"another model \(\w+, this run: other\)"):
        ledger.check(model_version="other", config_hash="x", out=str(out))


def test_bad_files_are_not_retried_but_read_errors_are(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    (source / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    real_read = LocalStorage.read

    def flaky(self: LocalStorage, uri: str) -> bytes:
        if uri.endswith("img-05.png"):
            raise StorageError(f"{uri}: cannot read (connection reset)")
        return real_read(self, uri)

    monkeypatch.setattr(LocalStorage, "read", flaky)
    first = run(source, out)
    assert sorted(key for key, _ in first.failed) == ["broken.png", "img-05.png"]
    monkeypatch.setattr(LocalStorage, "read", real_read)
    second = run(source, out)
    assert (second.labeled_now, second.done_before) == (1, 7)  # only the read error again
    assert [key for key, _ in second.failed] == ["broken.png"]
    rows = {r["key"]: r for r in merged(out)[0].to_pylist()}
    assert rows["img-05.png"]["status"] == "ok"
    assert rows["broken.png"]["retryable"] is False


@pytest.mark.slow
def test_killed_run_resumes_to_the_records_of_an_uninterrupted_run(tmp_path: Path) -> None:
    """SIGKILL the whole process group mid-run (the flow, its Prefect server, everything), then
    run again: the records equal a run that never stopped, and no file in the run folder was
    ever seen half-written."""
    source = tmp_path / "in"
    make_images(source, 24, seed=5, size=(240, 320))
    reference = tmp_path / "reference"
    run(source, reference, shard_size=2, batch_size=1)
    out = tmp_path / "killed"
    watcher = _Watcher(out)
    watcher.start()
    args = [
        "annotate",
        str(source),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--shard-size",
        "2",
        "--batch-size",
        "1",
    ]
    process = subprocess.Popen(
        [sys.executable, "-c", "from flows.cli import app; app()", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
    )
    try:
        deadline = time.monotonic() + 300
        while len(_done_shards(out)) < 2:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (out / "run.json").exists()
    interrupted = len(_done_shards(out))
    assert 2 <= interrupted < 12
    resumed = run(source, out, shard_size=2, batch_size=1)
    watcher.stop()
    assert resumed.done_before == 2 * interrupted
    assert resumed.labeled_now == 24 - 2 * interrupted
    assert_same_labels(out, reference)
    assert watcher.checked > 0 and watcher.partial == []


def _done_shards(out: Path) -> list[str]:
    folder = out / "images"
    return [p.name for p in folder.glob("shard-*.parquet")] if folder.is_dir() else []


class _Watcher(threading.Thread):
    """Opens every visible file in the run folder as soon as it appears, as a reader would."""

    def __init__(self, out: Path) -> None:
        super().__init__(daemon=True)
        self.out = out
        self.seen: set[tuple[Path, int]] = set()
        self.partial: list[str] = []
        self.checked = 0
        self.running = True

    def stop(self) -> None:
        self.running = False
        self.join()

    def run(self) -> None:
        while self.running:
            for path in list(self.out.rglob("*")) if self.out.exists() else []:
                if path.name.startswith(".") or not path.is_file():
                    continue
                try:
                    mtime = path.stat().st_mtime_ns
                except FileNotFoundError:
                    continue
                if (path, mtime) not in self.seen:
                    self.seen.add((path, mtime))
                    self._check(path)
            time.sleep(0.005)

    def _check(self, path: Path) -> None:
        self.checked += 1
        try:
            if path.suffix == ".parquet":
                pq.read_table(path)
            elif path.suffix == ".json":
                json.loads(path.read_bytes())
        except Exception as exc:  # any failure to parse is a half-written file
            self.partial.append(f"{path}: {exc}")


def test_out_of_device_memory_halves_the_batch_and_labels_everything(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import deeplab

    real_predict = deeplab.Predictor.predict
    sizes: list[int] = []

    def small_memory(self: deeplab.Predictor, images: list[object], *args: object) -> object:
        sizes.append(len(images))
        if len(images) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_predict(self, images, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(deeplab.Predictor, "predict", small_memory)
    summary = run(source, tmp_path / "run", batch_size=4, shard_size=7)
    assert summary.failed == () and summary.labeled == 7
    assert sizes[:3] == [4, 2, 1]  # halved down to what fits
    reference = run(source, tmp_path / "reference", shard_size=7)
    assert merged(tmp_path / "run")[1].equals(merged(tmp_path / "reference")[1])
    assert reference.labeled == 7


@pytest.mark.parametrize("tiles_fit", [True, False])
def test_an_image_too_large_for_the_device_goes_to_tiles_or_fails_alone(
    tiles_fit: bool, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of device memory even for one image: labeled in tiles, or, when even a tile does
    not fit, a failed row to retry elsewhere; the shard and the other images go on."""
    import deeplab

    real_predict, real_tiled = deeplab.Predictor.predict, deeplab.Predictor.predict_tiled
    too_large = {"img-02.png", "img-05.png"}
    big = [np.asarray(Image.open(source / name).convert("RGB")) for name in too_large]

    def whole(self: deeplab.Predictor, images: list[np.ndarray], *args: object) -> object:
        if any(np.array_equal(image, b) for image in images for b in big):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_predict(self, images, *args)  # type: ignore[arg-type]

    def tiles(self: deeplab.Predictor, image: np.ndarray, **kwargs: object) -> object:
        if not tiles_fit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_tiled(self, image, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(deeplab.Predictor, "predict", whole)
    monkeypatch.setattr(deeplab.Predictor, "predict_tiled", tiles)
    summary = run(source, tmp_path / "run", batch_size=4, shard_size=7)
    rows = {r["key"]: r for r in merged(tmp_path / "run")[0].to_pylist()}
    assert {k for k, r in rows.items() if r["status"] == "ok"} >= set(rows) - too_large
    for name in too_large:
        if tiles_fit:
            assert (rows[name]["status"], rows[name]["inference"]) == ("ok", "tiled")
            assert rows[name]["region_count"] > 0
        else:
            assert rows[name]["status"] == "failed" and rows[name]["retryable"]
            assert "out of device memory, even in 64 px tiles" in rows[name]["error"]
    assert len(summary.failed) == (0 if tiles_fit else 2)
