"""The Prefect flow only wires the plain functions: same inputs, same records."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from prefect.testing.utilities import prefect_test_harness

from deeplab.scenes import scenes
from flows.annotate import annotate_flow
from pipeline.config import RunConfig
from pipeline.labeling.annotate import annotate

TIMINGS = {"read_ms", "decode_ms", "predict_ms", "regions_ms"}


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[None]:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with prefect_test_harness(server_startup_timeout=90):
        yield


def test_flow_and_plain_function_write_the_same_records(
    tmp_path: Path, prefect_server: None
) -> None:
    source = tmp_path / "images"
    source.mkdir()
    for i, scene in enumerate(scenes(7, 5, height=96, width=128)):
        Image.fromarray(scene.image).save(source / f"{i}.png")
    (source / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")

    def config(out: str) -> RunConfig:
        return RunConfig(
            source=str(source), out=str(tmp_path / out), shard_size=2, batch_size=3, device="cpu"
        )

    plain = annotate(config("plain"))
    flowed = annotate_flow(config("flow"))
    assert (plain.images, plain.regions, plain.failed) == (
        flowed.images,
        flowed.regions,
        flowed.failed,
    )
    assert len(plain.failed) == 1
    for table in ("records", "images"):
        a = pq.read_table(tmp_path / "plain" / table)
        b = pq.read_table(tmp_path / "flow" / table)
        keep = [c for c in a.column_names if c not in TIMINGS]
        assert a.select(keep).equals(b.select(keep)), table
    assert (tmp_path / "flow" / "exports" / "coco.json").read_bytes() == (
        tmp_path / "plain" / "exports" / "coco.json"
    ).read_bytes()
    assert _latest_progress() == 100.0  # three quick shards: only the last update is sent


def _latest_progress() -> object:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["annotate-progress"])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    return artifact.data
