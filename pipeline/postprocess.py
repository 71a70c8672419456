"""Regions and review figures of predicted images, traced in worker processes.

Tracing is Python work per region, so one thread holding the GIL cannot keep up with the
model once images have hundreds of regions; processes use every core. The workers import
numpy, OpenCV and pycocotools but never torch, so they start in well under a second, and a
pool lives as long as the process that made it, across shards and runs.

How the pool shares the machine with the model is the caller's choice (see ``shards``): on
a GPU the workers trace while the next batch is in the model; on a CPU the forward already
uses every core, so batches and tracing take turns instead of fighting over the cores.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.regions import ImageRegions, RegionPolicy, image_regions
from pipeline.uncertainty import ImageUncertainty, image_uncertainty


@dataclass(frozen=True, slots=True)
class Traced:
    found: ImageRegions
    doubt: ImageUncertainty
    milliseconds: float  # the tracing itself, in the worker


def trace(
    class_map: npt.NDArray[np.uint8],
    confidence: npt.NDArray[np.uint8],
    *,
    image_id: str,
    policy: RegionPolicy,
    low_confidence: float,
) -> Traced:
    """One image's regions and review figures; what a worker runs."""
    start = time.perf_counter()
    found = image_regions(
        class_map, confidence, image_id=image_id, policy=policy, low_confidence=low_confidence
    )
    doubt = image_uncertainty(
        class_map, confidence, low_confidence=low_confidence, fragments=found.fragments
    )
    return Traced(found, doubt, (time.perf_counter() - start) * 1000)


def default_workers(device_type: str) -> int:
    """Every core on a CPU, where tracing takes turns with the forward; on a GPU every core
    but one, which feeds the device."""
    cores = os.cpu_count() or 1
    return cores if device_type == "cpu" else max(1, cores - 1)


_pools: dict[int, Executor] = {}
_lock = threading.Lock()


def tracer(workers: int) -> Executor:
    """This process's pool of ``workers`` tracing processes (0: one thread here), made on
    first use and kept. A pool broken by a killed worker is replaced, so a retried shard
    gets working processes."""
    with _lock:
        pool = _pools.get(workers)
        if pool is None or getattr(pool, "_broken", False):
            pool = (
                ThreadPoolExecutor(1, thread_name_prefix="regions")
                if workers == 0
                else ProcessPoolExecutor(
                    workers,
                    # spawn: a fork of a process running torch's thread pools can hang
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_one_opencv_thread,
                )
            )
            _pools[workers] = pool
        return pool


def _one_opencv_thread() -> None:
    """Each worker is one core's worth: OpenCV's own threads would only oversubscribe."""
    cv2.setNumThreads(1)
