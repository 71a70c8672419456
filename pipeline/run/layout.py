"""Where each file of a run folder lives; ``run.json`` (``run.manifest``) is written last."""

from __future__ import annotations

from pipeline.storage import Storage

MANIFEST = "run.json"
LEASE = "lease.json"  # who is writing the folder now (pipeline.run.lease)


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
    def index(self) -> str:
        """The latest row per image, for the shards it names (``pipeline.run.ledger``)."""
        return self.storage.join(self.root, "index.parquet")

    @property
    def pushed(self) -> str:
        """Where the run's images went in Label Studio (``pipeline.review.sync``)."""
        return self.storage.join(self.root, "review", "label-studio.json")

    def export(self, name: str) -> str:
        return self.storage.join(self.root, "exports", name)
