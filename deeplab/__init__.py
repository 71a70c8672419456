"""DeepLabV3 / V3+ as the papers describe them, with loaders for the checkpoints people have."""

from deeplab import builders as _builders  # noqa: F401  (registers the variants)
from deeplab.checkpoint import load, save
from deeplab.convert import CheckpointError
from deeplab.meta import ModelMeta
from deeplab.model import DeepLab
from deeplab.predictor import Prediction, Predictor
from deeplab.registry import build_model as build
from deeplab.registry import list_models
from deeplab.stride import at_output_stride

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
