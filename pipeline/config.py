"""Run configuration: one validated model at the boundary, from flags, ``PRELABEL_*`` or code.

A typo in a field name fails by name (``extra="forbid"``) instead of being silently ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.exporters.view import ExportOptions
from pipeline.regions import RegionPolicy
from pipeline.s3 import S3Settings


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

    source: str  # a folder or an s3://bucket/prefix of images
    out: str  # the run folder: a local folder or an s3://bucket/prefix
    model: str = "demo"  # "demo" (bundled) or a checkpoint path: prelabel, torchvision or VainF
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Images per forward pass; None: 2 on a CPU (larger batches measured slower per image
    # there), 8 on a GPU.
    batch_size: int | None = Field(None, ge=1, le=1024)
    max_side: int = Field(1024, ge=16)  # longer image side seen by the model; never upscaled
    # Larger images are refused from their header, before decoding. The default is Pillow's
    # decompression-bomb threshold, which also caps it (see pipeline.decode).
    max_pixels: int = Field(89_478_485, ge=1)
    shard_size: int = Field(256, ge=1)  # images per shard: the unit of work, retry and resume
    workers: int = Field(default_factory=_default_workers, ge=1)  # read + decode threads
    # Seconds one image's read may take before it is recorded as failed (retryable) and the
    # shard goes on: a hung mount or a file that never ends must not hold the run.
    read_timeout: float = Field(300.0, gt=0)
    # Seconds without a heartbeat after which another run may take over the run folder's lease
    # (a run on the same host whose process is gone is taken over at once).
    lease_timeout: float = Field(60.0, gt=0)
    # Processes that trace regions (pipeline.postprocess); None: one per core (one fewer on a
    # GPU); 0: one thread in this process.
    post_workers: int | None = Field(None, ge=0, le=256)
    low_confidence: float = Field(0.5, gt=0, lt=1)  # max-softmax below this counts as doubtful
    # Images over max_side: "downscale" to it, or "tile": full resolution in overlapping
    # tile_size windows (slower, finer boundaries; memory follows the width).
    large_images: Literal["downscale", "tile"] = "downscale"
    tile_size: int = Field(1024, ge=64)
    tile_overlap: int = Field(256, ge=0)
    # auto: bfloat16 autocast on CUDA, float32 on the CPU. See README for the trade-offs.
    precision: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    compile: bool = False  # torch.compile the model: pays a compile per input size
    # Run the checkpoint's weights at this output stride (None: the one it was trained at).
    # 8 is a finer map for 2.6x the multiply-adds of 16 (ResNet-50); README has the figures.
    output_stride: Literal[8, 16, 32] | None = None
    regions: RegionPolicy = RegionPolicy()
    exports: tuple[str, ...] = ("coco",)  # formats written when the run ends
    export_options: ExportOptions = ExportOptions()
    force: bool = False  # re-label every image, even those the run folder already holds
    s3: S3Settings = S3Settings()  # how to reach S3; credentials only from boto3's chain

    @model_validator(mode="after")
    def _tiles_overlap_less_than_a_tile(self) -> RunConfig:
        if self.tile_overlap >= self.tile_size:
            raise ValueError(
                f"tile_overlap {self.tile_overlap} must be under tile_size {self.tile_size}"
            )
        return self

    @field_validator("source", "out", "model")
    @classmethod
    def _absolute(cls, value: str) -> str:
        """Local paths made absolute, so a worker in another directory reads the same files."""
        if value == "demo" or "://" in value:
            return value
        return str(Path(value).expanduser().absolute())

    @property
    def labeling_hash(self) -> str:
        """Hash of the settings that change labels for the same model and image: a run folder
        holds labels from one of these, so reruns never mix two."""
        decisive = self.model_dump(
            mode="json",
            include={
                "max_side",
                "max_pixels",
                "low_confidence",
                "regions",
                "large_images",
                "tile_size",
                "tile_overlap",
                "precision",
            },
        )
        return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:16]
