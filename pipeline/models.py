"""Checkpoint references to ready predictors, loaded once per process.

Shard tasks ask for the predictor by reference; the cache keeps one model in memory per
(reference, device) however many shards the process runs.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

import deeplab
from deeplab.demo import DEMO_CHECKPOINT
from deeplab.predictor import resolve_device
from pipeline.config import RunConfig

DEMO = "demo"
CPU_BATCH, GPU_BATCH = 2, 8


def resolve_checkpoint(ref: str) -> Path:
    """``demo`` is the model bundled with the package; anything else is a file path."""
    return DEMO_CHECKPOINT if ref == DEMO else Path(ref).expanduser()


def load_predictor(config: RunConfig) -> deeplab.Predictor:
    """The run's predictor, loaded once per process for the settings that shape it."""
    return _cached(
        config.model,
        config.device,
        config.low_confidence,
        config.precision,
        config.compile,
        config.output_stride,
    )


@lru_cache(maxsize=2)
def _cached(
    ref: str,
    device: str,
    low_confidence: float,
    precision: str,
    compile: bool,
    output_stride: int | None,
) -> deeplab.Predictor:
    model, meta = deeplab.load(resolve_checkpoint(ref))
    if output_stride is not None:
        model, meta = deeplab.at_output_stride(model, meta, output_stride)
    return deeplab.Predictor(
        model,
        meta,
        device=device,
        low_confidence=low_confidence,
        precision=_resolved(precision, device),  # type: ignore[arg-type]
        compile=compile,
    )


def _resolved(precision: str, device: str) -> str | None:
    """``auto``: the Predictor's choice on CUDA (bfloat16); on a CPU with native bfloat16
    (AVX-512 BF16, AMX) bfloat16 too, measured about 1.5x faster than float32 with class maps
    agreeing on over 99% of pixels (bench/bench_pipeline.py); float32 elsewhere."""
    if precision != "auto":
        return precision
    if resolve_device(device).type == "cuda":
        return None
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # not every build exposes the probe
        native = False
    return "bfloat16" if native else "float32"


def batch_size_for(config: RunConfig, device: torch.device) -> int:
    """The run's batch size, or the device's default: on a CPU, 2 images per pass measured
    faster per image than 8 (bench/bench_pipeline.py), as larger batches fall out of cache."""
    if config.batch_size is not None:
        return config.batch_size
    return CPU_BATCH if device.type == "cpu" else GPU_BATCH
