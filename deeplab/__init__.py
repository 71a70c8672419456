"""DeepLabV3 / V3+ as the papers describe them, with loaders for the checkpoints people have.

The names below load on first use (PEP 562), so the torch-free parts of the package
(``deeplab.errors``, ``deeplab.files``, ``deeplab.bundled``) import without torch: the
command line answers a rerun with nothing to label without loading it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deeplab.checkpoint import load, save
    from deeplab.errors import CheckpointError
    from deeplab.meta import ModelMeta
    from deeplab.model import DeepLab
    from deeplab.predictor import Prediction, Predictor
    from deeplab.registry import build_model as build
    from deeplab.registry import list_models
    from deeplab.stride import at_output_stride

_HOMES: dict[str, tuple[str, str]] = {
    "CheckpointError": ("deeplab.errors", "CheckpointError"),
    "DeepLab": ("deeplab.model", "DeepLab"),
    "ModelMeta": ("deeplab.meta", "ModelMeta"),
    "Prediction": ("deeplab.predictor", "Prediction"),
    "Predictor": ("deeplab.predictor", "Predictor"),
    "at_output_stride": ("deeplab.stride", "at_output_stride"),
    "build": ("deeplab.registry", "build_model"),
    "list_models": ("deeplab.registry", "list_models"),
    "load": ("deeplab.checkpoint", "load"),
    "save": ("deeplab.checkpoint", "save"),
}

__all__ = [
    "CheckpointError",
    "DeepLab",
    "ModelMeta",
    "Prediction",
    "Predictor",
    "at_output_stride",
    "build",
    "list_models",
    "load",
    "save",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'deeplab' has no attribute {name!r}")
    module, attr = _HOMES[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups are plain attribute reads
    return value
