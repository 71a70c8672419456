"""A run folder of several shards and two passes, made without the model: the streamed
exports must write it byte for byte as the whole-run exports did (``golden_exports.json``).

The second pass labels again some images of the first (their rows supersede the old ones,
interleaved in key order with rows that stay), adds new images and fails one, so every way
a run's key order and its shard files can disagree is in it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from deeplab.scenes import Scene, scenes
from pipeline.geometry.policy import RegionPolicy
from pipeline.geometry.regions import image_regions
from pipeline.labeling.shard_plan import image_id_for
from pipeline.run.layout import RunLayout
from pipeline.run.manifest import ModelInfo, RunManifest
from pipeline.run.records import RegionColumns
from pipeline.run.tables import images_table, regions_table, write_table
from pipeline.storage import LocalStorage
from tests.runs import CLASS_NAMES, image_record

SHARD_SIZE = 4
KEYS = [f"cam{c}/{d}/frame {n:03d}.jpg" for c in (1, 2) for d in ("a", "b") for n in range(5)]
RELABELED = KEYS[1::3]  # spread over every first-pass shard
NEW = ["cam1/a/frame 002b.jpg", "cam3/z.png", "Cam1/a/frame 000.png"]
FAILED = {"cam2/a/frame 002.jpg": "not an image: truncated JPEG"}  # ok in the first pass


def write_sharded_run(out: Path) -> None:
    layout = RunLayout(LocalStorage(), str(out))
    policy = RegionPolicy(min_area=1)
    maps = iter(scenes(7, 64, height=48, width=64))
    first = sorted(KEYS)
    _write_pass(layout, 0, first, maps, policy, failed={})
    second = sorted({*RELABELED, *NEW, *FAILED})
    _write_pass(layout, 1, second, maps, policy, failed=FAILED)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    manifest = RunManifest(
        prelabel_version="test",
        config={"source": "/data/images", "regions": policy.model_dump(mode="json")},
        model=ModelInfo(
            ref="test",
            arch="deeplabv3plus_mobilenet_v3_large",
            source="prelabel",
            model_version="v1",
            class_names=CLASS_NAMES,
        ),
        shards=(),
        started_at=now,
        finished_at=now,
        images=len({*first, *second}),
        images_failed=len(FAILED),
        regions=0,
    )
    layout.storage.write_atomic(layout.manifest, manifest.model_dump_json().encode())


def _write_pass(
    layout: RunLayout,
    generation: int,
    keys: list[str],
    maps: Iterator[Scene],
    policy: RegionPolicy,
    *,
    failed: dict[str, str],
) -> None:
    for start in range(0, len(keys), SHARD_SIZE):
        shard = f"shard-{generation:04d}-{start // SHARD_SIZE:05d}"
        regions, images = [], []
        for key in keys[start : start + SHARD_SIZE]:
            image_id = image_id_for(key)
            if key in failed:
                failure = image_record(
                    key, image_id, "/data/images", None, 0, status="failed", error=failed[key]
                )
                images.append(failure)
                continue
            class_map = next(maps).mask
            confidence = np.where(class_map % 2 == 0, 230, 120).astype(np.uint8)
            found = image_regions(class_map, confidence, image_id=image_id, policy=policy).regions
            regions += found
            images.append(image_record(key, image_id, "/data/images", class_map.shape, len(found)))
        images = [dataclasses.replace(r, shard=shard) for r in images]
        lineage = {r.image_id: f"{r.content_hash}:g{generation}" for r in images}
        write_table(
            layout.storage,
            layout.records(shard),
            regions_table(RegionColumns.of(regions), CLASS_NAMES, lineage),
        )
        write_table(layout.storage, layout.images(shard), images_table(images))
