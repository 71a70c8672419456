"""What a fine-tuning run is asked to do, checked before anything loads.

Apart from the training code (``pipeline.training.finetune``) so the command line can check a
``prelabel train`` command without importing torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.errors import PrelabelError
from pipeline.limits import MAX_PIXELS
from pipeline.storage import absolute

# Steps when the config names none. A CPU step of the demo model at the default batch and crop
# takes ~1.2 s on 2 AVX-512 cores (a few times that on a busy or older CPU): 100 steps finish in
# minutes, not the hour 500 would take, and already lift the validation mIoU of a layout the
# demo model gets wrong from ~20% to ~60%.
GPU_STEPS, CPU_STEPS = 500, 100


class FinetuneError(PrelabelError):
    """Fine-tuning that cannot start (no labeled image, an unwritable output); one line why."""


class FinetuneConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    images: str  # a folder or s3:// prefix; keys are paths relative to it
    masks: str | None = None  # reviewed labels as a masks folder ...
    coco: str | None = None  # ... or as a COCO instances file
    init: str = "demo"  # the checkpoint to start from: "demo" or a path
    out: str  # the checkpoint to write (local path)
    steps: int | None = Field(None, ge=1)  # None: default_steps(device)
    batch_size: int = Field(8, ge=1, le=1024)
    crop: int = Field(256, ge=32)  # square training crops, pixels
    scale: tuple[float, float] = (0.5, 2.0)  # random rescale of each image before cropping
    val_share: float = Field(0.2, ge=0, lt=1)
    class_weights: Literal["auto", "none"] = "none"  # auto: 1/sqrt(pixel frequency)
    lr: float = Field(1e-3, gt=0)
    device: str = "auto"
    seed: int = 0
    max_pixels: int = Field(MAX_PIXELS, ge=1)

    @field_validator("images", "masks", "coco", "init", "out")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        return value if value is None or value == "demo" else absolute(value)

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if (self.masks is None) == (self.coco is None):
            raise ValueError("give the reviewed labels as either masks or coco, not both or none")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale range {self.scale} must be 0 < low <= high")
        return self

    @property
    def truth(self) -> str:
        return self.masks or self.coco or ""
