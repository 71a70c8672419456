"""Run folders made from known class maps, without the model: exporters are tested against
exactly the maps they must reproduce."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pipeline.formats import RunView, open_run
from pipeline.geometry.policy import RegionPolicy
from pipeline.geometry.regions import image_regions
from pipeline.labeling.shard_plan import image_id_for
from pipeline.run.layout import RunLayout
from pipeline.run.manifest import ModelInfo, RunManifest
from pipeline.run.records import ImageRecord, RegionColumns
from pipeline.run.tables import images_table, regions_table, write_table
from pipeline.storage import LocalStorage

CLASS_NAMES = ("background", "disc", "box", "triangle", "ring")
SHARD = "shard-0000-00000"


def write_run(
    out: Path,
    class_maps: Mapping[str, np.ndarray],
    *,
    class_names: tuple[str, ...] = CLASS_NAMES,
    policy: RegionPolicy | None = None,
    failed: Mapping[str, str] | None = None,
    source: str = "/data/images",
) -> RunView:
    """A finished run folder whose images have exactly these class maps (key -> map).

    Confidence is 200/255 everywhere; ``failed`` adds failed images (key -> reason).
    """
    policy = policy or RegionPolicy(min_area=1)
    layout = RunLayout(LocalStorage(), str(out))
    regions, images = [], []
    for key, class_map in class_maps.items():
        image_id = image_id_for(key)
        found = image_regions(
            class_map, np.full_like(class_map, 200), image_id=image_id, policy=policy
        ).regions
        regions += found
        images.append(image_record(key, image_id, source, class_map.shape, len(found)))
    for key, reason in (failed or {}).items():
        images.append(
            image_record(key, image_id_for(key), source, None, 0, status="failed", error=reason)
        )
    images.sort(key=lambda r: r.key)
    lineage = {r.image_id: f"{r.content_hash}:v1:c1" for r in images}
    write_table(
        layout.storage,
        layout.records(SHARD),
        regions_table(RegionColumns.of(regions), class_names, lineage),
    )
    write_table(layout.storage, layout.images(SHARD), images_table(images))
    now = datetime.now(UTC)
    manifest = RunManifest(
        prelabel_version="test",
        config={"source": source, "regions": policy.model_dump(mode="json")},
        model=ModelInfo(
            ref="test",
            arch="deeplabv3plus_mobilenet_v3_large",
            source="prelabel",
            model_version="v1",
            class_names=class_names,
        ),
        shards=(SHARD,),
        started_at=now,
        finished_at=now,
        images=len(images),
        images_failed=len(failed or {}),
        regions=len(regions),
    )
    layout.storage.write_atomic(layout.manifest, manifest.model_dump_json().encode())
    return open_run(str(out))


def image_record(
    key: str,
    image_id: str,
    source: str,
    shape: tuple[int, ...] | None,
    region_count: int,
    *,
    status: str = "ok",
    error: str | None = None,
) -> ImageRecord:
    height, width = shape if shape is not None else (None, None)
    return ImageRecord(
        image_id=image_id,
        key=key,
        uri=f"{source}/{key}",
        shard=SHARD,
        status=status,
        error=error,
        retryable=False,
        size_bytes=1000,
        etag="e",
        content_hash=f"h-{key}",
        model_version="v1",
        config_hash="c1",
        width=width,
        height=height,
        model_width=width,
        model_height=height,
        mode="RGB" if shape else None,
        frames=1 if shape else None,
        inference="whole" if shape else None,
        engine="torch" if shape else None,
        precision="float32" if shape else None,
        region_count=region_count,
        mean_confidence=0.8 if shape else None,
        low_confidence_share=0.0 if shape else None,
        boundary_uncertainty=0.1 if shape else None,
        fragments=0 if shape else None,
        review_priority=0.2 if shape else None,
        read_ms=1.0,
        decode_ms=1.0,
        predict_ms=1.0,
        regions_ms=1.0,
    )
