"""What a checkpoint says about its model besides the weights."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from deeplab.model import DeepLab
from deeplab.registry import build_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

Family = Literal["prelabel", "torchvision", "vainf", "smp"]


class ModelMeta(BaseModel):
    """Architecture, labels and input normalization: all a checkpoint needs to be used alone.

    ``options`` are the builder's keyword arguments (output stride, ASPP rates, ...) except
    ``num_classes``, which is ``len(class_names)``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    arch: str
    options: dict[str, JsonValue] = Field(default_factory=dict)
    class_names: tuple[str, ...]
    mean: tuple[float, float, float] = IMAGENET_MEAN  # on 0..1 RGB
    std: tuple[float, float, float] = IMAGENET_STD
    source: Family = "prelabel"
    provenance: dict[str, JsonValue] = Field(default_factory=dict)
    model_version: str = ""  # set from the content by save/load; see model_version()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def build(self) -> DeepLab:
        model = build_model(self.arch, num_classes=self.num_classes, **self.options)
        assert isinstance(model, DeepLab)
        return model


def model_version(state: Mapping[str, torch.Tensor], meta: ModelMeta) -> str:
    """Hash of everything that decides the outputs: weights, architecture, labels, normalization.

    Provenance is left out: retraining notes must not make the same model look new.
    """
    digest = hashlib.sha256()
    decisive = {"arch", "options", "class_names", "mean", "std"}
    outputs: dict[str, Any] = meta.model_dump(include=decisive)
    digest.update(json.dumps(outputs, sort_keys=True).encode())
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{key}|{tensor.dtype}|{tuple(state[key].shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
