"""A run's manifest, ``run.json``: what the run was, written last, so a folder with one is a
finished run."""

from __future__ import annotations

from datetime import datetime
from importlib.metadata import PackageNotFoundError, version

from pydantic import BaseModel, ConfigDict, Field

from pipeline.geometry.policy import RegionPolicy
from pipeline.limits import MAX_PIXELS
from pipeline.storage.s3_settings import S3Settings


def code_version() -> str:
    try:
        return version("prelabel")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


class RecordedConfig(BaseModel):
    """The run's config as ``run.json`` keeps it: every setting (enough to run it again), with
    the ones a run folder's readers use typed. A setting a manifest of another prelabel
    version lacks reads as its default; one this version does not know is kept as it is."""

    model_config = ConfigDict(frozen=True, extra="allow")

    source: str = "-"
    exports: tuple[str, ...] = ("coco",)
    regions: RegionPolicy = RegionPolicy()
    s3: S3Settings = S3Settings()
    workers: int = Field(8, ge=1)
    max_pixels: int = Field(MAX_PIXELS, ge=1)


class ModelInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    ref: str  # what the user asked for: "demo" or a path
    arch: str
    source: str  # the family that wrote the checkpoint
    model_version: str
    class_names: tuple[str, ...]


class RunManifest(BaseModel):
    """What a run was: enough to re-run it, export it again or compare it with another run."""

    model_config = ConfigDict(frozen=True)

    prelabel_version: str
    config: RecordedConfig
    model: ModelInfo
    shards: tuple[str, ...]  # the shard files that belong to this run, in order
    started_at: datetime
    finished_at: datetime
    images: int
    images_failed: int
    regions: int
    # What ran the forward in the run's own process ("openvino bfloat16"); each image's row
    # says what ran it, which differs where a work pool's machines do.
    engine: str | None = None
