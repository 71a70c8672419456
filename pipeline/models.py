"""Checkpoint references to ready predictors, loaded once per process.

Shard tasks ask for the predictor by reference; the cache keeps one model in memory per
(reference, device) however many shards the process runs.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import deeplab
from deeplab.demo import DEMO_CHECKPOINT
from pipeline.config import RunConfig

DEMO = "demo"


def resolve_checkpoint(ref: str) -> Path:
    """``demo`` is the model bundled with the package; anything else is a file path."""
    return DEMO_CHECKPOINT if ref == DEMO else Path(ref).expanduser()


def load_predictor(config: RunConfig) -> deeplab.Predictor:
    """The run's predictor, loaded once per process for the settings that shape it."""
    return _cached(
        config.model, config.device, config.low_confidence, config.precision, config.compile
    )


@lru_cache(maxsize=2)
def _cached(
    ref: str, device: str, low_confidence: float, precision: str, compile: bool
) -> deeplab.Predictor:
    model, meta = deeplab.load(resolve_checkpoint(ref))
    return deeplab.Predictor(
        model,
        meta,
        device=device,
        low_confidence=low_confidence,
        precision=None if precision == "auto" else precision,  # type: ignore[arg-type]
        compile=compile,
    )
