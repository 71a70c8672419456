"""Checkpoint references to ready predictors, loaded once per process.

Shard tasks ask for the predictor by reference; the cache keeps one model in memory per
(reference, device) however many shards the process runs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

import deeplab
from deeplab.engines import Engine, openvino_missing, timings
from deeplab.errors import EngineError
from deeplab.files import write_atomic
from deeplab.predictor import resolve_device
from pipeline.config import RunConfig, default_cache_dir
from pipeline.errors import PrelabelError
from pipeline.labeling.model_ids import checkpoint_of, file_stamp

log = logging.getLogger(__name__)

CPU_BATCH, GPU_BATCH = 2, 8
ENGINES: tuple[Engine, ...] = ("torch", "openvino")
PROBE = (480, 640)  # the image (h, w) engines are timed on: a common photo size


class ModelSetupError(PrelabelError):
    """The model cannot run as asked here (an engine not installed, a precision the device
    lacks)."""


def load_predictor(config: RunConfig) -> deeplab.Predictor:
    """The run's predictor, loaded once per process for the settings that shape it and the
    checkpoint file as it is now: a worker that serves runs for days sees a replaced file."""
    path = checkpoint_of(config)
    return _cached(
        path,
        file_stamp(path),  # None: the load names the file and the reason
        config.device,
        config.low_confidence,
        config.precision,
        config.compile,
        config.output_stride,
        config.engine,
        config.cache_dir or default_cache_dir(),
    )


@lru_cache(maxsize=2)
def _cached(
    path: Path,
    stamp: tuple[int, int, int] | None,  # the file's (inode, size, mtime): part of the key only
    device: str,
    low_confidence: float,
    precision: str,
    compile: bool,
    output_stride: int | None,
    engine: str,
    cache_dir: Path,
) -> deeplab.Predictor:
    model, meta = deeplab.load(path)
    if output_stride is not None:
        model, meta = deeplab.at_output_stride(model, meta, output_stride)

    def predictor(engine: Engine) -> deeplab.Predictor:
        # The openvino engine's "auto" is its own choice (bfloat16 where the CPU has it).
        chosen = None if engine == "openvino" and precision == "auto" else precision
        try:
            return deeplab.Predictor(
                model,
                meta,
                device=device,
                low_confidence=low_confidence,
                precision=_resolved(chosen, device),  # type: ignore[arg-type]
                compile=compile,
                engine=engine,
                cache_dir=cache_dir,
            )
        except (EngineError, ValueError) as exc:
            raise ModelSetupError(str(exc)) from exc

    if engine == "openvino" and (missing := openvino_missing()):
        raise ModelSetupError(f"engine openvino: {missing}")
    if engine != "auto":
        return predictor(engine)  # type: ignore[arg-type]
    if resolve_device(device).type != "cpu":
        return predictor("torch")
    if missing := openvino_missing():
        log.warning("engine auto: %s; running on torch", missing)
        return predictor("torch")
    return _faster(predictor, meta, precision, compile, cache_dir)


def _faster(
    predictor: Callable[[Engine], deeplab.Predictor],
    meta: deeplab.ModelMeta,
    precision: str,
    compile: bool,
    cache_dir: Path,
) -> deeplab.Predictor:
    """The faster engine on this CPU for this model, timed once and remembered: the same
    machine, model, libraries and settings get the same answer without timing again."""
    key = "|".join(
        [
            meta.model_version,
            torch.backends.cpu.get_cpu_capability(),
            f"{torch.get_num_threads()} threads",
            f"torch {torch.__version__}",
            f"openvino {version('openvino')}",
            f"precision {precision}",
            f"compile {compile}",
            f"timed on {CPU_BATCH} images through predict",
        ]
    )
    book = cache_dir / "engines.json"
    known = _read_json(book)
    if key in known:
        return predictor(known[key]["engine"])
    candidates = {name: predictor(name) for name in ENGINES}
    # What a run does: a CPU batch through the Predictor, decoding included.
    probe = [np.zeros((*PROBE, 3), np.uint8)] * CPU_BATCH
    batches = timings({name: p.predict for name, p in candidates.items()}, probe)
    ms = {name: t / CPU_BATCH for name, t in batches.items()}
    winner = min(ENGINES, key=ms.__getitem__)
    log.info(
        "engine auto: %s (%s per %dx%d image)",
        winner,
        ", ".join(f"{name} {t:.0f} ms" for name, t in ms.items()),
        *PROBE[::-1],
    )
    known[key] = {"engine": winner, "ms": {name: round(t, 1) for name, t in ms.items()}}
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(book, json.dumps(known, indent=1, sort_keys=True).encode())
    return candidates[winner]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _resolved(precision: str | None, device: str) -> str | None:
    """``auto``: the Predictor's choice on CUDA (bfloat16); on a CPU with native bfloat16
    (AVX-512 BF16, AMX) bfloat16 too, measured about 1.5x faster than float32 with class maps
    agreeing on over 99% of pixels (bench/bench_pipeline.py); float32 elsewhere. None: the
    engine's own choice."""
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
