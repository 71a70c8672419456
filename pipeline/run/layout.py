"""The layout of a run folder and its manifest, ``run.json``, written last."""

from __future__ import annotations

from datetime import datetime
from importlib.metadata import PackageNotFoundError, version

from pydantic import BaseModel, ConfigDict, JsonValue

from pipeline.storage import Storage

MANIFEST = "run.json"
LEASE = "lease.json"  # who is writing the folder now (pipeline.run.lease)


def code_version() -> str:
    try:
        return version("prelabel")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


class RunLayout:
    """Paths inside a run folder; shard files are named by shard id, so reruns overwrite them."""

    def __init__(self, storage: Storage, root: str) -> None:
        self.storage = storage
        self.root = root

    @property
    def manifest(self) -> str:
        return self.storage.join(self.root, MANIFEST)

    @property
    def lease(self) -> str:
        return self.storage.join(self.root, LEASE)

    def records(self, shard_id: str) -> str:
        return self.storage.join(self.root, "records", f"{shard_id}.parquet")

    def images(self, shard_id: str) -> str:
        return self.storage.join(self.root, "images", f"{shard_id}.parquet")

    @property
    def pushed(self) -> str:
        """Where the run's images went in Label Studio (``pipeline.review.sync``)."""
        return self.storage.join(self.root, "review", "label-studio.json")

    def export(self, name: str) -> str:
        return self.storage.join(self.root, "exports", name)


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
    config: dict[str, JsonValue]
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
