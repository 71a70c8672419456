"""Regions and review figures of predicted images, traced in worker processes.

Tracing is Python work per region, so one thread holding the GIL cannot keep up with the
model once images have hundreds of regions; processes use every core. The workers import
numpy, OpenCV, pycocotools, pyarrow and the COCO encoder (each image's annotations are
encoded here too, for ``coco_ahead``) but never torch, so they start in well under a second
(0.3 s to import), and a pool lives as long as the process that made it, across shards and
runs.

The workers trace while the next batch is in the model. On a CPU, where the forward already
uses every core, they run at the lowest priority (``yielding``): the model's threads are never
held up, and tracing fills the gaps between and inside its operators. Measured against
batches and tracing taking turns: 10.01 s against 10.48 s for 48 images (median of 5). The
lowest priority is Linux's idle scheduling class where there is one, below nice 19: a
worker at nice 19 still takes its weighted share of a core from the model's threads, one in
the idle class runs when they leave a core idle. On the bench, prelabel / its forward went
from 0.829-0.852 to 0.836-0.879, higher in each of five alternated pairs. The cost: beside
other busy programs the workers get even less of the machine than at nice 19, and the run
slows to the pace of what those programs leave.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from pipeline.formats.coco import encoded_annotations
from pipeline.geometry.policy import RegionPolicy
from pipeline.geometry.regions import image_regions
from pipeline.labeling.uncertainty import ImageUncertainty, image_uncertainty
from pipeline.run.tables import regions_table


@dataclass(frozen=True, slots=True)
class Traced:
    rows: pa.Table  # the image's rows of the run's regions table
    doubt: ImageUncertainty
    milliseconds: float  # the tracing itself, in the worker (not the COCO encoding)
    coco: bytes | None  # the rows as encoded COCO annotations, when asked for


def trace(
    class_map: npt.NDArray[np.uint8],
    confidence: npt.NDArray[np.uint8],
    *,
    image_id: str,
    lineage: str,
    class_names: Sequence[str],
    policy: RegionPolicy,
    low_confidence: float,
    coco_size: tuple[int, int] | None = None,
) -> Traced:
    """One image's rows of the regions table and its review figures; what a worker runs.
    The rows travel back as Arrow buffers, and the process that owns the model only
    concatenates them. ``coco_size``: the image's height and width, to encode its COCO
    annotations here too (``coco_ahead``)."""
    start = time.perf_counter()
    found = image_regions(
        class_map, confidence, image_id=image_id, policy=policy, low_confidence=low_confidence
    )
    doubt = image_uncertainty(
        class_map, confidence, low_confidence=low_confidence, fragments=found.fragments
    )
    rows = regions_table(found.columns, class_names, {image_id: lineage})
    milliseconds = (time.perf_counter() - start) * 1000
    coco = None
    if coco_size is not None:
        height, width = coco_size
        coco = encoded_annotations(rows, image_id, height=height, width=width)
    return Traced(rows, doubt, milliseconds, coco)


def default_workers(device_type: str) -> int:
    """Every core on a CPU, where the workers yield to the forward; on a GPU every core but
    one, which feeds the device."""
    cores = os.cpu_count() or 1
    return cores if device_type == "cpu" else max(1, cores - 1)


_pools: dict[tuple[int, bool], Executor] = {}
_lock = threading.Lock()


def tracer(workers: int, *, yielding: bool = False) -> Executor:
    """This process's pool of ``workers`` tracing processes (0: one thread here), made on
    first use and kept. A pool broken by a killed worker is replaced, so a retried shard
    gets working processes. ``yielding`` workers run at the lowest CPU priority, so they
    only take cycles the model leaves idle."""
    with _lock:
        pool = _pools.get((workers, yielding))
        if pool is None or getattr(pool, "_broken", False):
            pool = (
                ThreadPoolExecutor(1, thread_name_prefix="regions")
                if workers == 0
                else _processes(workers, yielding)
            )
            _pools[(workers, yielding)] = pool
        return pool


def _processes(workers: int, yielding: bool) -> ProcessPoolExecutor:
    """Every worker started now, with Ctrl-C ignored: a process starting Python when the
    terminal's SIGINT reaches its group would print a traceback, and a child that starts with
    SIGINT ignored keeps it so (Python installs its handler only over the default)."""
    pool = ProcessPoolExecutor(
        workers,
        # spawn: a fork of a process running torch's thread pools can hang
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_setup,
        initargs=(yielding,),
    )
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
    try:
        for _ in range(workers):  # each submit with no idle worker starts one
            pool.submit(int)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return pool


def _worker_setup(yielding: bool) -> None:
    """Each worker is one core's worth: OpenCV's own threads would only oversubscribe. Ctrl-C
    reaches every process of the terminal's group: the workers leave it to the process that
    owns them, which stops them, instead of each printing a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # already so when started by _processes
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True).start()
    cv2.setNumThreads(1)
    _reuse_freed_memory()
    if yielding:
        os.nice(19)
        if hasattr(os, "SCHED_IDLE"):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def _reuse_freed_memory() -> None:
    """Keep the memory an image's tracing frees for the next image's. Tracing allocates
    image-sized buffers by the dozen (masks, OpenCV's copies, summed-area tables), and glibc
    gives them back to the system and takes them again, zeroed, page by page: 600 page faults
    per bench image, 1.3 of its 9.9 ms. With its thresholds raised, a worker holds at most
    ``_KEPT`` bytes it does not use; an allocation larger than ``_MAPPED`` still gets its own
    mapping, returned when freed. Other C libraries keep their own ways."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, _MAPPED)
    mallopt(_M_TRIM_THRESHOLD, _KEPT)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MAPPED, _KEPT = 64 << 20, 256 << 20


def _exit_with(parent: int) -> None:
    """End this worker once its parent is gone: a parent that ended without unwinding
    (``os._exit`` after Ctrl-C, ``kill -9``) cannot stop it, and an orphan would hold the
    terminal's output open and a core's memory forever."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(0)
