"""Run configuration: one validated model at the boundary, from flags, ``PRELABEL_*`` or code.

A typo in a field name fails by name (``extra="forbid"``) instead of being silently ignored.
"""

from __future__ import annotations

import hashlib
import json
import os

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.exporters.view import ExportOptions
from pipeline.regions import RegionPolicy


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


class RunConfig(BaseSettings):
    """Everything that decides what an annotate run reads, computes and writes.

    Environment variables ``PRELABEL_<FIELD>`` (``PRELABEL_REGIONS__MIN_AREA`` for nested
    fields) fill what the caller leaves out.
    """

    model_config = SettingsConfigDict(
        env_prefix="PRELABEL_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    source: str  # a folder (or, later, an object-store prefix) of images
    out: str  # the run folder
    model: str = "demo"  # "demo" (bundled) or a checkpoint path: prelabel, torchvision or VainF
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    batch_size: int = Field(8, ge=1, le=1024)
    max_side: int = Field(1024, ge=16)  # longer image side seen by the model; never upscaled
    max_pixels: int = Field(100_000_000, ge=1)  # larger images are refused before decoding
    shard_size: int = Field(256, ge=1)  # images per shard: the unit of work, retry and resume
    workers: int = Field(default_factory=_default_workers, ge=1)  # read + decode threads
    low_confidence: float = Field(0.5, gt=0, lt=1)  # max-softmax below this counts as doubtful
    regions: RegionPolicy = RegionPolicy()
    exports: tuple[str, ...] = ("coco",)  # formats written when the run ends
    export_options: ExportOptions = ExportOptions()
    force: bool = False  # re-label every image, even those the run folder already holds

    @property
    def labeling_hash(self) -> str:
        """Hash of the settings that change labels for the same model and image: a run folder
        holds labels from one of these, so reruns never mix two."""
        decisive = self.model_dump(
            mode="json", include={"max_side", "max_pixels", "low_confidence", "regions"}
        )
        return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:16]
