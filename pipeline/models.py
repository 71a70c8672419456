"""Checkpoint references to ready predictors, loaded once per process.

Shard tasks ask for the predictor by reference; the cache keeps one model in memory per
(reference, device) however many shards the process runs.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import deeplab
from deeplab.demo import DEMO_CHECKPOINT

DEMO = "demo"


def resolve_checkpoint(ref: str) -> Path:
    """``demo`` is the model bundled with the package; anything else is a file path."""
    return DEMO_CHECKPOINT if ref == DEMO else Path(ref).expanduser()


@lru_cache(maxsize=2)
def load_predictor(ref: str, device: str, low_confidence: float) -> deeplab.Predictor:
    model, meta = deeplab.load(resolve_checkpoint(ref))
    return deeplab.Predictor(model, meta, device=device, low_confidence=low_confidence)
