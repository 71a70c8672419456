"""A finished run folder of N images, made without the model: how opening it, a rerun's plan,
every export, the report and an evaluation grow with N (time and peak RSS per step).

    python bench/bench_scale.py [--sizes 10000,100000] [--steps open,plan,coco,...]
        [--s3 [--s3-max 10000]] [--keep DIR] [--shard-size 256] [--jobs 2]

For each N a run folder is synthesized with prelabel's own writers (``images_table``,
``regions_table``, ``write_table``, ``RunManifest``), exactly as ``annotate`` would have left it
with the bundled demo model and ``RunConfig``'s defaults: the same ``model_version`` and config
hash in every row, shards ``shard-0000-NNNNN`` of ``--shard-size`` key-sorted images, image ids
from the keys and region ids from the lineage. A rerun's plan therefore takes the folder as its
own. Then each step runs alone in a fresh Python process, through the public entry points the
CLI uses (``open_run``, ``plan_run`` under ``run_lease``, ``export`` one format at a time,
``write_report``, ``evaluate_runs`` over ``open_truth``), and reports its work time (after its
imports), its CPU time (all threads and worker processes: steadier than wall time on a shared
machine) and its peak RSS (the process's own ``VmHWM``, plus its worker processes'). The table
gives, per step and N, those, ms per image, and the growth per 10x images against the previous
N (10 is linear in time, 1 is flat in memory); then the targets: at the largest N (meant for
10^6 against 10^4) every export's peak under 1 GiB and within 1.2x of its peak at the smallest
N, its time per image within 1.5x, and the plan under 60 s and 1 GiB.

How realistic the data is:

- Images: keys like ``train/cam03/2024-05-01/000123.jpg`` (train/val/test, twelve cameras, a
  folder per camera and day of 100-1000 frames with gaps); each camera has one size, mixed as in
  a real collection: 640x480, 800x600, 1024x768, 1280x720, 1920x1080 (0.85 MP on average).
  0.2% of the images failed to decode (a failed row, no regions), as broken files do.
- Regions: 5-50 per image (26 on average) of the demo model's four classes, from class maps of
  discs, boxes, triangles, rings, patchy and jagged blobs, thin lines and specks, traced by the
  real region code (``image_regions``, the default RegionPolicy): polygons with holes (median 10
  per image, a tenth of the images over 60; a few speckled ones have thousands), about 140
  vertices per region, each region's compressed RLE, its fidelity and the polygon/RLE choice,
  as a run writes them. As in real runs under the default policy, RLE geometry is rare (0.01%:
  speckled regions over the per-image vertex budget); masks, report and evaluate paint every
  region from its RLE anyway. A pool of such class maps (``--templates`` per size, each at
  ``--variants`` positions: 256 of each size by default) is traced once; each image takes one
  of its size at random, with its own ids, scores and figures. Geometry repeats across the run,
  as it never does in a real one, but seldom within a shard (whose images mostly share a camera,
  so a size), and a shard file is what Parquet compresses: measured at 3000 images, the bytes
  per vertex grow with the pool (240 maps: 2.3, 960: 3.1, 1280: 3.4) and level off near this.
- Source: a local folder of the images' files, ``N * 1.01`` of them: the run holds N, and 1% are
  new, scattered among the keys, so the plan lists them all and must label exactly those.
  Writing 10^6 real images would take hours and hundreds of GB, so every file of one size is a
  hard link to one small JPEG of that size (a new copy every 50000 links, under ext4's limit):
  the listing (a directory entry and a stat per image, 10^6 of them) is real, and so are the
  etags, taken from the listing itself. The report reads its originals from there.
- Truth: a masks folder (``SegmentationClass/<key>.png``, the masks export's layout) with one
  grey PNG per labeled image: the image's class map with a class dilated, a region erased and
  one added, as a reviewer's edits. Files are hard links to one PNG per pool map; MaskTruth
  reads every file, so the reads are real.
- ``--s3``: the same for the sizes up to ``--s3-max`` (default 10^4) in a moto S3 server on
  loopback that the bench starts in its own process: source, run folder and truth are
  ``s3://`` prefixes, every object put for real (no links there), and the steps read and write
  through prelabel's S3 storage.

Before the steps, a warm-up process loads the demo model once, as a first run would have, so its
identity and the engine choice are in prelabel's cache; a rerun's plan knows the model by that
identity and does not load it (the shards do, where they run): the header gives what loading
it costs a process, for comparison. Then one
plan runs unmeasured, as the run that wrote the shards would have ended: whatever the ledger
derives from them (an index) is then up to date, and the page cache is warm for every step.
Disk: the run folder (about 12 KiB per image) and each step's exports (removed after the step
unless ``--keep``; the log line of each says how large: per image about 29 KiB of COCO, 55 KiB
of Label Studio, 33 KiB of CVAT): at 10^6 that is up to 70 GB at once, so use ``--tmp`` on a
disk that has it, or ``--ls-split N --drop-split``: Label Studio's tasks N to a file, each
removed as soon as it lands and only its size kept. Memory: a step whose RSS passes
``--max-rss-gib`` is killed and reported as such, so one that does not scale cannot take the
machine down; the bench exits 1 when a step failed, was killed or said other counts than the
data holds. Timings are upper
bounds on a loaded machine; compare only figures from one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # kept out of --help: everything heavy is imported where it is used
    import numpy as np
    import numpy.typing as npt

    from pipeline.run.manifest import ModelInfo
    from pipeline.run.records import Geometry, RegionColumns

FORMATS = ("coco", "label-studio", "cvat", "masks", "parquet")
STEPS = ("open", "plan", *FORMATS, "report", "evaluate")
EXTRA_STEPS = ("verify",)  # run when asked for with --steps
SIZES = ((640, 480), (800, 600), (1024, 768), (1280, 720), (1920, 1080))
CAMERAS = (0, 0, 0, 0, 1, 2, 2, 3, 3, 3, 4, 4)  # each camera's size: a third of them VGA
SPLITS = (("train", 0.8), ("val", 0.1), ("test", 0.1))
FOLDER_IMAGES = (100, 1000)  # frames per camera and day
NEW_SHARE = 0.01  # images in the source that the run does not hold yet
FAILED_SHARE = 0.002  # images that failed to decode
REGIONS = (5, 50)  # per labeled image
LINKS_PER_FILE = 50_000  # ext4 allows 65000 hard links to one inode
BUCKET = "bench"
MIB = 1024 * 1024


# -- the pool of traced class maps ---------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One traced class map: an image's regions as columns, its figures and its truth PNG."""

    width: int
    height: int
    count: int
    class_id: npt.NDArray[np.int16]
    score: npt.NDArray[np.float32]
    low_confidence_share: npt.NDArray[np.float32]
    area: npt.NDArray[np.int64]
    bbox: npt.NDArray[np.int32]  # (count, 4)
    rle: list[str]
    fidelity: npt.NDArray[np.float32]
    vertices: npt.NDArray[np.int32]
    geometry: list[Geometry]
    coordinates: npt.NDArray[np.float32]
    ring_lengths: npt.NDArray[np.int32]
    part_lengths: npt.NDArray[np.int32]
    polygon_lengths: npt.NDArray[np.int32]
    holes: int  # rings that are holes
    mean_confidence: float
    low_confidence: float
    boundary_uncertainty: float
    fragments: int
    truth_png: bytes


def make_pool(
    seed: int, templates: int, variants: int, executor: Executor | None = None
) -> list[Variant]:
    """``templates`` class maps per image size, each traced at ``variants`` positions; in
    ``executor``'s processes, if given."""
    tasks = [(seed, size, n, variants) for size in range(len(SIZES)) for n in range(templates)]
    traced = executor.map(_traced_template, tasks) if executor else map(_traced_template, tasks)
    return [variant for group in traced for variant in group]


def _traced_template(task: tuple[int, int, int, int]) -> list[Variant]:
    import numpy as np

    seed, size, n, variants = task
    rng = np.random.default_rng([seed, size, n])
    width, height = SIZES[size]
    class_map, confidence = _template(rng, height, width)
    out = []
    for v in range(variants):
        dx, dy = (0, 0) if v == 0 else _shift(rng, class_map)
        shifted = np.roll(class_map, (dy, dx), axis=(0, 1))
        out.append(_traced(rng, shifted, np.roll(confidence, (dy, dx), axis=(0, 1))))
    return out


def _template(
    rng: np.random.Generator, height: int, width: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """A class map with 5-50 regions and its confidence (max softmax x 255)."""
    from pipeline.geometry.policy import RegionPolicy
    from pipeline.geometry.regions import image_regions

    policy = RegionPolicy()
    for _ in range(20):
        wanted = int(rng.integers(REGIONS[0], REGIONS[1] + 1))
        class_map, confidence = _drawn(rng, height, width, wanted)
        found = image_regions(class_map, confidence, image_id="-", policy=policy)
        if REGIONS[0] <= len(found.columns.image_id) <= REGIONS[1]:
            return class_map, confidence
    raise RuntimeError(f"no class map of {REGIONS} regions at {width}x{height}")


def _drawn(
    rng: np.random.Generator, height: int, width: int, shapes: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Shapes painted back to front; most maps keep a margin free, so they can be shifted."""
    import cv2
    import numpy as np

    class_map = np.zeros((height, width), np.uint8)
    level = np.zeros((height, width), np.uint8)  # each shape's confidence
    level[:] = rng.integers(200, 250)
    if rng.random() < 0.25:  # ground: a band over the whole width, touching the bottom
        top = int(height * rng.uniform(0.6, 0.8))
        xs = np.linspace(0, width, 24)
        ys = top + rng.normal(0, height * 0.02, len(xs))
        outline = [*np.column_stack([xs, ys]).tolist(), [width, height], [0, height]]
        cv2.fillPoly(class_map, [np.array(outline, np.int32)], 2)
        cv2.fillPoly(level, [np.array(outline, np.int32)], int(rng.integers(180, 245)))
    margin_x, margin_y = int(width * 0.08), int(height * 0.08)
    inner = (margin_x, margin_y, width - 2 * margin_x, height - 2 * margin_y)
    short = min(inner[2], inner[3])
    shape = np.zeros((height, width), np.uint8)
    for _ in range(shapes):
        class_id = int(rng.integers(1, 5))
        size = short * math.exp(rng.uniform(math.log(0.012), math.log(0.12)))
        cx = inner[0] + rng.uniform(size, max(size + 1, inner[2] - size))
        cy = inner[1] + rng.uniform(size, max(size + 1, inner[3] - size))
        centre, turn = (int(cx), int(cy)), rng.uniform(0, 360)
        kind = rng.random()
        shape[:] = 0
        if kind < 0.06:  # a thin line
            end = (int(cx + 2 * size * math.cos(turn)), int(cy + 2 * size * math.sin(turn)))
            cv2.line(shape, centre, end, 1, int(rng.integers(1, 3)))
        elif kind < 0.12:  # a speck just over the minimum area
            cv2.circle(shape, centre, 3, 1, -1)
        elif kind < 0.16:  # patchy, as doubtful texture comes out: blocky holes
            cv2.ellipse(shape, centre, (int(size), int(size * 0.6)), turn, 0, 360, 1, -1)
            coarse = rng.random((height // 6 + 1, width // 6 + 1)) < 0.85
            shape &= coarse.repeat(6, 0).repeat(6, 1)[:height, :width].view(np.uint8)
        elif kind < 0.3:  # a jagged blob
            angles = np.linspace(0, 2 * np.pi, 40, endpoint=False)
            radius = size * rng.uniform(0.5, 1.0, 40)
            points = np.column_stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)])
            cv2.fillPoly(shape, [points.astype(np.int32)], 1)
        elif class_id == 1:  # disc
            cv2.ellipse(shape, centre, (int(size), int(size * 0.7)), turn, 0, 360, 1, -1)
        elif class_id == 2:  # box
            corners = cv2.boxPoints(((cx, cy), (size * 2, size * 1.2), turn))
            cv2.fillPoly(shape, [corners.astype(np.int32)], 1)
        elif class_id == 3:  # triangle
            angles = np.radians(turn) + np.array([0, 2.1, 4.2])
            points = np.column_stack([cx + size * np.cos(angles), cy + size * np.sin(angles)])
            cv2.fillPoly(shape, [points.astype(np.int32)], 1)
        else:  # ring: a region with a hole
            thick = max(2, int(size * 0.3))
            cv2.ellipse(shape, centre, (int(size), int(size * 0.8)), turn, 0, 360, 1, thick)
        painted = shape.view(bool)
        class_map[painted] = class_id
        level[painted] = int(rng.integers(150, 250))
    if rng.random() < 0.1:  # foliage-like speckle: more vertices than a polygon may have
        shape[:] = 0
        axes = (int(short * 0.15), int(short * 0.1))
        cv2.ellipse(shape, (width // 2, height // 2), axes, 0, 0, 360, 1, -1)
        shape &= (rng.random(shape.shape) < 0.9).view(np.uint8)
        class_map[shape.view(bool)] = int(rng.integers(1, 5))
    # Doubt sits at boundaries, as a model's does.
    edges = cv2.morphologyEx(class_map, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    confidence = level.copy()
    confidence[edges] = rng.integers(90, 150, int(edges.sum()))
    return class_map, confidence


def _shift(rng: np.random.Generator, class_map: npt.NDArray[np.uint8]) -> tuple[int, int]:
    """A move that keeps every region whole inside the image."""
    import numpy as np

    ys, xs = np.nonzero(class_map)
    height, width = class_map.shape
    dx = int(rng.integers(-int(xs.min()), width - int(xs.max())))
    dy = int(rng.integers(-int(ys.min()), height - int(ys.max())))
    return dx, dy


def _traced(
    rng: np.random.Generator, class_map: npt.NDArray[np.uint8], confidence: npt.NDArray[np.uint8]
) -> Variant:
    import numpy as np

    from pipeline.geometry.policy import RegionPolicy
    from pipeline.geometry.regions import image_regions
    from pipeline.labeling.uncertainty import image_uncertainty

    found = image_regions(class_map, confidence, image_id="-", policy=RegionPolicy())
    c = found.columns
    doubt = image_uncertainty(class_map, confidence, low_confidence=0.5, fragments=found.fragments)
    height, width = class_map.shape
    return Variant(
        width=width,
        height=height,
        count=len(c.image_id),
        class_id=np.array(c.class_id, np.int16),
        score=np.array(c.score, np.float32),
        low_confidence_share=np.array(c.low_confidence_share, np.float32),
        area=np.array(c.area, np.int64),
        bbox=np.array(c.bbox, np.int32).reshape(-1, 4),
        rle=list(c.rle),
        fidelity=np.array(c.fidelity, np.float32),
        vertices=np.array(c.vertices, np.int32),
        geometry=list(c.geometry),
        coordinates=c.coordinates,
        ring_lengths=np.diff(c.rings).astype(np.int32),
        part_lengths=np.diff(c.parts).astype(np.int32),
        polygon_lengths=np.diff(c.polygons).astype(np.int32),
        holes=int(len(c.rings) - 1 - (len(c.parts) - 1)),
        mean_confidence=doubt.mean_confidence,
        low_confidence=doubt.low_confidence_share,
        boundary_uncertainty=doubt.boundary_uncertainty,
        fragments=doubt.fragments,
        truth_png=_truth_png(rng, class_map),
    )


def _truth_png(rng: np.random.Generator, class_map: npt.NDArray[np.uint8]) -> bytes:
    """What a reviewer made of the map: one class grown 2 px, one region erased, one added."""
    import cv2
    import numpy as np
    from PIL import Image

    truth = class_map.copy()
    present = [int(c) for c in np.unique(class_map) if c]
    grown = int(rng.choice(present))
    wider = cv2.dilate((class_map == grown).view(np.uint8), np.ones((5, 5), np.uint8)) > 0
    truth[wider & (class_map == 0)] = grown
    erased = int(rng.choice(present))
    count, labels = cv2.connectedComponents((class_map == erased).view(np.uint8))
    if count > 1:
        truth[labels == int(rng.integers(1, count))] = 0
    height, width = class_map.shape
    centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
    cv2.circle(truth, centre, int(min(height, width) * 0.04), int(rng.integers(1, 5)), -1)
    buffer = io.BytesIO()
    Image.fromarray(truth).save(buffer, "PNG")  # grey: pixel values are class ids
    return buffer.getvalue()


# -- image keys and the source --------------------------------------------------------------


def image_keys(seed: int, count: int) -> tuple[list[str], dict[str, int]]:
    """``count`` keys in key order, and the size (index into SIZES) of each camera folder."""
    import numpy as np

    rng = np.random.default_rng(seed)
    cameras = {f"cam{c:02d}": size for c, size in enumerate(CAMERAS)}
    days: dict[tuple[str, str], int] = {}
    keys: list[str] = []
    names, shares = [s[0] for s in SPLITS], [s[1] for s in SPLITS]
    # Each folder from a camera of the size furthest under its share so far, so that every N
    # has the same mix of sizes (and figures per image compare across N).
    wanted = np.bincount(CAMERAS, minlength=len(SIZES)) / len(CAMERAS)
    have = np.zeros(len(SIZES))
    while len(keys) < count:
        split = str(rng.choice(names, p=shares))
        group = int(np.argmax(wanted * (len(keys) + FOLDER_IMAGES[1]) - have))
        pick = rng.choice([c for c, size in enumerate(CAMERAS) if size == group])
        camera = f"cam{int(pick):02d}"
        day = days.get((split, camera), 0)
        days[(split, camera)] = day + 1
        date = np.datetime64("2024-05-01") + np.timedelta64(day, "D")
        frames = int(rng.integers(*FOLDER_IMAGES))
        frames = min(frames, count - len(keys))
        have[group] += frames
        numbers = np.cumsum(rng.choice([1, 1, 1, 1, 2, 3, 5], frames)) + int(rng.integers(0, 50))
        keys += [f"{split}/{camera}/{date}/{n:06d}.jpg" for n in numbers.tolist()]
    keys.sort()
    return keys, cameras


def size_of(key: str, cameras: dict[str, int]) -> int:
    return cameras[key.split("/")[1]]


def source_jpeg(width: int, height: int) -> bytes:
    """A small real JPEG of the size: a soft gradient, as a decoder and a thumbnail see one."""
    import numpy as np
    from PIL import Image

    x = np.linspace(40, 200, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 50, height, dtype=np.float32)[:, None, None]
    pixels = (x + y + np.array([0, 20, 40], np.float32)).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


# -- the run folder -------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardJob:
    shard_id: str
    out: str
    seed: int
    rows: tuple[tuple[str, str, int, str, int], ...]  # key, uri, size, etag, variant (-1 failed)


@dataclass(frozen=True)
class Lineage:
    model_version: str
    config_hash: str
    class_names: tuple[str, ...]
    max_side: int


@dataclass
class Synthesized:
    """What was made, to check each step's figures against."""

    source: str
    out: str
    truth: str
    listed: int  # images in the source
    images: int  # rows in the run
    failed: int
    regions: int
    new_keys: list[str]  # in the source, not in the run
    shards: int
    stats: dict[str, str] = field(default_factory=dict)


_pool: list[Variant] = []
_lineage: Lineage | None = None


def _set_worker(pool: list[Variant], lineage: Lineage | None) -> None:
    global _pool, _lineage
    _pool, _lineage = pool, lineage


def write_shard(job: ShardJob) -> int:
    """One shard's records, then its images file, as ``process_shard`` writes them; returns
    its region count."""
    from pipeline.run.layout import RunLayout
    from pipeline.run.tables import images_table, regions_table, write_table
    from pipeline.storage import storage_for

    assert _lineage is not None
    records, columns, lineage = shard_rows(job, _pool, _lineage)
    layout = RunLayout(storage_for(job.out), job.out)
    regions = regions_table(columns, _lineage.class_names, lineage)
    write_table(layout.storage, layout.records(job.shard_id), regions)
    write_table(layout.storage, layout.images(job.shard_id), images_table(records))
    return int(regions.num_rows)


def shard_rows(
    job: ShardJob, pool: Sequence[Variant], lineage: Lineage
) -> tuple[list[Any], RegionColumns, dict[str, str]]:
    """The shard's image records, its regions as columns, and each image's lineage."""
    import numpy as np

    from pipeline.labeling.shard_plan import image_id_for
    from pipeline.run.records import ImageRecord, RegionColumns, offsets
    from pipeline.storage import printable

    rng = np.random.default_rng([job.seed, int(job.shard_id.rsplit("-", 1)[1])])
    count = len(job.rows)
    timings = rng.lognormal(0, 0.3, (count, 4)) * [2.0, 9.0, 60.0, 14.0]
    drift = rng.normal(0, 0.01, count)
    records, chunks, ids, lineages = [], [], [], {}
    for n, (key, uri, size, etag, variant) in enumerate(job.rows):
        image_id = image_id_for(key)
        content_hash = hashlib.sha256(f"{key}\0{etag}".encode()).hexdigest()
        common: dict[str, Any] = {
            "image_id": image_id,
            "key": key,
            "uri": printable(uri),
            "shard": job.shard_id,
            "size_bytes": size,
            "etag": etag,
            "content_hash": content_hash,
            "model_version": lineage.model_version,
            "config_hash": lineage.config_hash,
            "read_ms": float(timings[n, 0]),
            "decode_ms": float(timings[n, 1]),
        }
        if variant < 0:
            records.append(
                ImageRecord(
                    **common,
                    status="failed",
                    error=f"{printable(uri)}: cannot decode (image file is truncated)",
                    retryable=False,
                    width=None,
                    height=None,
                    model_width=None,
                    model_height=None,
                    mode=None,
                    frames=None,
                    inference=None,
                    engine=None,
                    precision=None,
                    region_count=0,
                    mean_confidence=None,
                    low_confidence_share=None,
                    boundary_uncertainty=None,
                    fragments=None,
                    review_priority=None,
                    predict_ms=0.0,
                    regions_ms=0.0,
                )
            )
            continue
        v = pool[variant]
        scale = min(1.0, lineage.max_side / max(v.width, v.height))
        mean = float(np.clip(v.mean_confidence + drift[n], 0, 1))
        records.append(
            ImageRecord(
                **common,
                status="ok",
                error=None,
                retryable=False,
                width=v.width,
                height=v.height,
                model_width=round(v.width * scale),
                model_height=round(v.height * scale),
                mode="RGB",
                frames=1,
                inference="whole" if scale == 1 else "downscaled",
                engine="torch",
                precision="float32",
                region_count=v.count,
                mean_confidence=mean,
                low_confidence_share=v.low_confidence,
                boundary_uncertainty=v.boundary_uncertainty,
                fragments=v.fragments,
                review_priority=1 - mean,
                predict_ms=float(timings[n, 2]),
                regions_ms=float(timings[n, 3]),
            )
        )
        chunks.append(v)
        ids.append(image_id)
        lineages[image_id] = f"{content_hash}:{lineage.model_version}:{lineage.config_hash}"

    def joined(name: str, dtype: Any) -> Any:
        return np.concatenate([getattr(c, name) for c in chunks] or [np.zeros(0, dtype)])

    regions = sum(c.count for c in chunks)
    score = joined("score", np.float32) * rng.uniform(0.97, 1.0, regions).astype(np.float32)
    columns = RegionColumns(
        image_id=[i for i, c in zip(ids, chunks, strict=True) for _ in range(c.count)],
        class_id=joined("class_id", np.int16).tolist(),
        score=score.tolist(),
        low_confidence_share=joined("low_confidence_share", np.float32).tolist(),
        area=joined("area", np.int64).tolist(),
        bbox=[(a, b, c, d) for a, b, c, d in joined("bbox", np.int32).reshape(-1, 4).tolist()],
        rle=[r for c in chunks for r in c.rle],
        fidelity=joined("fidelity", np.float32).tolist(),
        vertices=joined("vertices", np.int32).tolist(),
        geometry=[g for c in chunks for g in c.geometry],
        coordinates=joined("coordinates", np.float32),
        rings=offsets(joined("ring_lengths", np.int32)),
        parts=offsets(joined("part_lengths", np.int32)),
        polygons=offsets(joined("polygon_lengths", np.int32)),
    )
    return records, columns, lineages


def synthesize(
    root: str,
    count: int,
    *,
    model: ModelInfo,
    shard_size: int,
    seed: int = 0,
    jobs: int = 1,
    templates: int = 128,
    variants: int = 2,
    new: int | None = None,
    failed: int | None = None,
    pool: list[Variant] | None = None,
    log: Callable[[str], None] | None = None,
) -> Synthesized:
    """A finished run folder of ``count`` images under ``root`` (a folder or ``s3://bucket/p``),
    its source (``new`` more images than the run holds; 1% by default) and its truth.

    ``root/images`` is the source, ``root/run`` the run folder, ``root/truth`` the masks;
    ``pool``: class maps made by ``make_pool`` (with ``seed``, ``templates``, ``variants``)."""
    import numpy as np

    from pipeline.config import RunConfig
    from pipeline.formats.masks import mask_name
    from pipeline.run.layout import RunLayout
    from pipeline.run.manifest import RecordedConfig, RunManifest, code_version
    from pipeline.storage import is_uri, storage_for

    say = log or (lambda message: None)
    started = time.perf_counter()
    s3 = is_uri(root)
    source, out, truth = (
        f"{root.rstrip('/')}/{name}" if s3 else str(Path(root, name))
        for name in ("images", "run", "truth")
    )
    new = round(count * NEW_SHARE) if new is None else new
    failed = round(count * FAILED_SHARE) if failed is None else failed
    rng = np.random.default_rng(seed)

    if pool is None:
        with _executor(jobs) as executor:
            pool = make_pool(seed, templates, variants, executor)
        say(f"traced {len(pool)} class maps ({time.perf_counter() - started:.1f} s)")
    by_size = [[i for i, v in enumerate(pool) if (v.width, v.height) == s] for s in SIZES]

    keys, cameras = image_keys(seed, count + new)
    fresh = set(rng.choice(len(keys), new, replace=False).tolist())
    new_keys = [k for i, k in enumerate(keys) if i in fresh]
    held = [k for i, k in enumerate(keys) if i not in fresh]
    blobs = [source_jpeg(w, h) for w, h in SIZES]
    sizes = [size_of(k, cameras) for k in keys]
    t0 = time.perf_counter()
    if s3:
        _put_all(source, keys, [blobs[s] for s in sizes], jobs=16)
    else:
        _link_all(Path(root) / "blobs", Path(source), keys, [(f"{s}.jpg", blobs[s]) for s in sizes])
    listed = {info.key: info for info in storage_for(source).list(source)}
    if len(listed) != len(keys):
        raise RuntimeError(f"{source}: listed {len(listed)} images, wrote {len(keys)}")
    say(f"wrote and listed the source, {len(keys)} images ({time.perf_counter() - t0:.1f} s)")

    config = RunConfig(source=source, out=out, shard_size=shard_size, exports=FORMATS)
    lineage = Lineage(model.model_version, config.labeling_hash, model.class_names, config.max_side)
    broken = set(rng.choice(len(held), failed, replace=False).tolist()) if failed else set()
    choice = rng.integers(0, 1 << 30, len(held))
    rows = []
    for n, key in enumerate(held):
        group = by_size[size_of(key, cameras)]
        variant = -1 if n in broken else group[int(choice[n]) % len(group)]
        info = listed[key]
        rows.append((key, info.uri, info.size, info.etag, variant))
    shards = [
        ShardJob(f"shard-0000-{i // shard_size:05d}", out, seed, tuple(rows[i : i + shard_size]))
        for i in range(0, len(rows), shard_size)
    ]
    t0 = time.perf_counter()
    with _executor(jobs, (pool, lineage)) as executor:
        done = (
            executor.map(write_shard, shards, chunksize=4) if executor else map(write_shard, shards)
        )
        regions = sum(done)
    say(f"wrote {len(shards)} shards, {regions} regions ({time.perf_counter() - t0:.1f} s)")

    t0 = time.perf_counter()
    labeled = [r for r in rows if r[4] >= 0]
    masks = [f"SegmentationClass/{mask_name(r[0])}.png" for r in labeled]
    pngs = [(f"truth-{r[4]}.png", pool[r[4]].truth_png) for r in labeled]
    if s3:
        _put_all(truth, masks, [data for _, data in pngs], jobs=16)
    else:
        _link_all(Path(root) / "blobs", Path(truth), masks, pngs)
    say(f"wrote the truth, {len(masks)} masks ({time.perf_counter() - t0:.1f} s)")

    layout = RunLayout(storage_for(out), out)
    now = datetime.now(UTC)
    manifest = RunManifest(
        prelabel_version=code_version(),
        config=RecordedConfig.model_validate(config.model_dump(mode="json")),
        model=model,
        shards=tuple(s.shard_id for s in shards),
        started_at=now,
        finished_at=now,
        images=len(rows),
        images_failed=len(broken),
        regions=regions,
        engine="torch float32",
    )
    layout.storage.write_atomic(layout.manifest, manifest.model_dump_json(indent=2).encode())
    used = [pool[r[4]] for r in labeled] or pool[:1]
    holes = sorted(v.holes for v in used)
    rle = sum(v.geometry.count("rle") for v in used)
    stats = {
        "regions/image": f"{regions / max(1, len(labeled)):.1f}",
        "RLE geometry": f"{100 * rle / max(1, regions):.2f}% of regions",
        "holes/image": f"median {holes[len(holes) // 2]}, p90 {holes[int(len(holes) * 0.9)]}",
        "vertices/region": f"{sum(int(v.vertices.sum()) for v in used) / max(1, regions):.0f}",
        "MP/image": f"{sum(v.width * v.height for v in used) / len(used) / 1e6:.2f}",
        "synthesis": f"{time.perf_counter() - started:.1f} s",
    }
    if not s3:
        stats["run folder"] = f"{_folder_bytes(Path(out)) / MIB:.0f} MiB"
    return Synthesized(
        source, out, truth, len(keys), len(rows), len(broken), regions, new_keys, len(shards), stats
    )


@contextmanager
def _executor(
    jobs: int, shared: tuple[list[Variant], Lineage] | None = None
) -> Iterator[Executor | None]:
    """Processes holding ``shared`` (for ``write_shard``); None for one job: work is done here
    then (tests, small N, and this file imported rather than run, which spawned processes
    could not import)."""
    if jobs <= 1:
        if shared is not None:
            _set_worker(*shared)
        yield None
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        jobs,
        mp_context=context,
        initializer=_set_worker,
        initargs=shared or ([], None),
    ) as executor:
        yield executor


def _link_all(
    blobs: Path, folder: Path, names: Sequence[str], files: Sequence[tuple[str, bytes]]
) -> None:
    """``folder/name`` for each name, a hard link to its file (a new copy every
    LINKS_PER_FILE links)."""
    blobs.mkdir(parents=True, exist_ok=True)
    links: dict[str, int] = {}
    made: set[Path] = set()
    for name, (blob, data) in zip(names, files, strict=True):
        n = links.get(blob, 0)
        links[blob] = n + 1
        target = blobs / f"{n // LINKS_PER_FILE}-{blob}"
        if n % LINKS_PER_FILE == 0:
            target.write_bytes(data)
        path = folder / name
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        os.link(target, path)


def _put_all(prefix: str, names: Sequence[str], bodies: Sequence[bytes], *, jobs: int) -> None:
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    bucket, _, folder = prefix.removeprefix("s3://").partition("/")
    client = boto3.client("s3", config=Config(max_pool_connections=jobs))

    def put(item: tuple[str, bytes]) -> None:
        client.put_object(Bucket=bucket, Key=f"{folder}/{item[0]}", Body=item[1])

    with ThreadPoolExecutor(jobs) as executor:
        list(executor.map(put, zip(names, bodies, strict=True)))


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


# -- one step in its own process --------------------------------------------------------------


def run_step(spec: dict[str, Any]) -> dict[str, Any]:
    """In the child: the step through the entry points the CLI uses; its figures."""
    step, out = spec["step"], spec["out"]
    if step == "warmup":
        return _warmup()
    from pipeline.formats import ExportOptions, export, open_run
    from pipeline.storage import is_uri

    if step == "imports":  # what every step's process holds before it reads anything
        import pipeline.quality.evaluate
        import pipeline.quality.truth
        import pipeline.review.report  # noqa: F401

        return {"seconds": 0.0, "peak_kib": _own_peak_kib()}

    if step == "plan":
        from pipeline.config import RunConfig
        from pipeline.labeling.annotate import plan_run, run_lease
    elif step == "report":
        from pipeline.review.report import write_report
    elif step == "evaluate":
        from pipeline.quality.evaluate import evaluate_runs
        from pipeline.quality.truth import open_truth
    elif step == "verify":
        from pipeline.run.layout import RunLayout
        from pipeline.run.verify import verify_run
        from pipeline.storage import storage_for
    start, cpu = time.perf_counter(), time.process_time()
    figures: dict[str, Any]
    if step == "open":
        view = open_run(out)
        if hasattr(view, "image_count"):  # a view that reads shards as exports stream them
            figures = {"images": view.image_count, "regions": view.region_count}
        else:
            figures = {"images": view.images.num_rows, "regions": view.regions.num_rows}
    elif step == "plan":
        config = RunConfig(source=spec["source"], out=out, shard_size=spec["shard_size"])
        with run_lease(config) as lease:
            plan = plan_run(config, lease.token)
        planned = [item.key for shard in plan.shards for item in shard.items]
        figures = {"listed": plan.images, "done": plan.done, "planned": len(planned)}
        figures["keys"] = hashlib.sha256("\n".join(planned).encode()).hexdigest()
    elif step in FORMATS:
        split = spec.get("ls_split") if step == "label-studio" else None
        with _dropped(out, spec.get("drop_split", False) and split is not None) as dropped:
            written = export(open_run(out), [step], ExportOptions(ls_split=split))
        figures = {"files": len(written), "written": written, "dropped": dropped}
    elif step == "report":
        report = write_report(open_run(out))
        figures = {"labeled": report.labeled, "shown": report.shown, "failed": report.failed}
    elif step == "evaluate":
        evaluation = evaluate_runs([open_run(out)], open_truth(spec["truth"]))[0]
        figures = {"scored": evaluation.images, "miou": evaluation.miou}
    elif step == "verify":
        health = verify_run(RunLayout(storage_for(out), out))
        figures = {"images": health.images, "regions": health.regions, "ok": health.ok}
    else:
        raise SystemExit(f"unknown step {step!r}")
    figures["seconds"] = time.perf_counter() - start
    helpers_cpu, helpers_kib = _helpers()
    # Every thread's and every worker process's: steadier than wall time on a shared machine.
    figures["cpu"] = time.process_time() - cpu + helpers_cpu
    figures["peak_kib"] = _own_peak_kib() + helpers_kib
    written, dropped = figures.pop("written", []), figures.pop("dropped", [0])
    if step == "masks" and not is_uri(out):  # a file per image; the export names its indexes
        figures["MiB"] = _folder_bytes(Path(out, "exports", "masks")) / MIB
    elif written and not is_uri(written[0]):
        kept = [Path(uri) for uri in written if Path(uri).exists()]
        figures["MiB"] = (dropped[0] + sum(path.stat().st_size for path in kept)) / MIB
    return figures


@contextmanager
def _dropped(out: str, dropping: bool) -> Iterator[list[int]]:
    """With ``dropping``, a thread removes each split Label Studio file as soon as it lands
    (they land whole, by rename) and counts its bytes; the export goes on writing the next."""
    dropped, done = [0], threading.Event()
    folder = Path(out, "exports", "label-studio")

    def sweep() -> None:
        for path in sorted(folder.glob("tasks-*.json")):
            dropped[0] += path.stat().st_size
            path.unlink()

    def watch() -> None:
        while not done.wait(0.5):
            sweep()

    watcher = threading.Thread(target=watch, daemon=True)
    if dropping:
        sweep()  # an earlier export's files are not this one's
        dropped[0] = 0
        watcher.start()
    try:
        yield dropped
    finally:
        done.set()
        if dropping:
            watcher.join()
            sweep()


def _warmup() -> dict[str, Any]:
    """The model loaded once, as a first run would have: its identity and the engine choice
    are then in prelabel's cache for every later process."""
    import torch

    from pipeline.config import RunConfig
    from pipeline.labeling.model_ids import model_info
    from pipeline.labeling.models import load_predictor

    config = RunConfig(source="warmup", out="warmup")
    predictor = load_predictor(config)
    return {
        "model": model_info(config).model_dump(mode="json"),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "engine": f"{predictor.engine.name} {predictor.precision}",
        "threads": torch.get_num_threads(),
        "peak_kib": _own_peak_kib(),
    }


def _helpers() -> tuple[float, int]:
    """(CPU seconds, summed VmHWM in KiB) of the worker processes this step started (evaluate
    scores in a pool): a step's cost is theirs too. Summed peaks overstate a little (shared
    pages, peaks at different times), never understate."""
    me, cpu, kib = str(os.getpid()), 0.0, 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if stat[1] != me:
                continue
            cpu += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
            kib += _peak_kib(entry / "status") or 0
        except OSError:  # gone meanwhile
            continue
    return cpu, kib


def _peak_kib(status: Path) -> int | None:
    """A process's VmHWM from its ``/proc/<pid>/status``."""
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def _own_peak_kib() -> int:
    """VmHWM: this process's own peak, not the parent's pages a spawned child starts with."""
    peak = _peak_kib(Path("/proc/self/status"))
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@dataclass
class Measured:
    step: str
    store: str
    images: int
    seconds: float | None  # the step's work, after its imports
    cpu: float | None  # its CPU time, all threads
    wall: float  # the whole process
    peak_mib: float | None
    figures: dict[str, Any]
    problem: str | None = None  # a crash, a kill, or figures that do not match the data


def measure(
    spec: dict[str, Any], *, folder: Path, max_rss_mib: float, timeout: float
) -> tuple[dict[str, Any] | None, float, float, str | None]:
    """Run one step in a fresh process: (figures, wall seconds, largest RSS seen, problem)."""
    result = folder / f"{spec['step']}.json"
    result.unlink(missing_ok=True)
    logged = folder / f"{spec['step']}.log"
    command = [sys.executable, __file__, "--child", json.dumps({**spec, "result": str(result)})]
    start = time.perf_counter()
    with logged.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    seen = [0.0]
    killed: list[str] = []

    def watch() -> None:
        while process.poll() is None:
            rss = _rss_mib(process.pid)
            seen[0] = max(seen[0], rss)
            why = None
            if rss > max_rss_mib:
                why = f"killed at {rss:.0f} MiB RSS (--max-rss-gib)"
            elif time.perf_counter() - start > timeout:
                why = f"killed after {timeout:.0f} s (--step-timeout)"
            if why:
                killed.append(why)
                process.send_signal(signal.SIGKILL)
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    code = process.wait()
    watcher.join()
    wall = time.perf_counter() - start
    if killed:
        return None, wall, seen[0], killed[0]
    if code != 0 or not result.exists():
        lines = logged.read_text(errors="replace").strip().splitlines() or [f"exit {code}"]
        return None, wall, seen[0], f"failed: {lines[-1][:160]} (see {logged})"
    figures: dict[str, Any] = json.loads(result.read_text())
    return figures, wall, seen[0], None


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def check(step: str, figures: dict[str, Any], made: Synthesized) -> str | None:
    """What a step's figures must say about the data it ran on; None when they do."""
    labeled = made.images - made.failed
    wanted: dict[str, Any]
    if step in ("open", "verify"):
        wanted = {"images": made.images, "regions": made.regions}
        if step == "verify":
            wanted["ok"] = True
    elif step == "plan":
        planned = hashlib.sha256("\n".join(made.new_keys).encode()).hexdigest()
        wanted = {"listed": made.listed, "done": made.images, "planned": len(made.new_keys)}
        wanted["keys"] = planned
    elif step == "report":
        wanted = {"labeled": labeled, "failed": made.failed}
    elif step == "evaluate":
        wanted = {"scored": labeled}
    else:
        return None if figures.get("files", 0) > 0 else "wrote nothing"
    wrong = [f"{k} {figures.get(k)} (want {v})" for k, v in wanted.items() if figures.get(k) != v]
    return ", ".join(wrong) or None


# -- the table ----------------------------------------------------------------------------------


def per_ten(ratio: float, images: float) -> float:
    """A ratio over ``images`` times the images, as the ratio per 10x."""
    return float(ratio ** (1 / math.log10(images))) if images > 1 else float("nan")


def table(rows: Sequence[Measured]) -> list[str]:
    """Per step and N; growth per 10x against the previous N (time: 10 is linear; RSS: 1 is
    flat), and ms per image and RSS against the smallest N."""
    head = (
        f"{'store':<6} {'step':<13} {'N':>8} {'work s':>8} {'cpu s':>8} {'ms/img':>7} "
        f"{'wall s':>7} {'peak MiB':>8} {'time/10x':>8} {'cpu/10x':>7} {'RSS/10x':>7} "
        f"{'ms/img:1st':>10} {'RSS:1st':>7}  check"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        earlier = [
            r
            for r in rows
            if (r.store, r.step) == (row.store, row.step) and r.images < row.images and r.seconds
        ]
        previous = max(earlier, key=lambda r: r.images, default=None)
        first = min(earlier, key=lambda r: r.images, default=None)
        cells = ["-"] * 5
        if row.seconds and row.peak_mib:
            if previous and previous.seconds and previous.peak_mib:
                grown = row.images / previous.images
                cells[0] = f"{per_ten(row.seconds / previous.seconds, grown):.2f}"
                if row.cpu and previous.cpu:
                    cells[1] = f"{per_ten(row.cpu / previous.cpu, grown):.2f}"
                cells[2] = f"{per_ten(row.peak_mib / previous.peak_mib, grown):.2f}"
            if first and first.seconds and first.peak_mib:
                cells[3] = f"{_per_image(row) / _per_image(first):.2f}"
                cells[4] = f"{row.peak_mib / first.peak_mib:.2f}"
        work = f"{row.seconds:.2f}" if row.seconds is not None else "-"
        cpu = f"{row.cpu:.2f}" if row.cpu is not None else "-"
        per = f"{_per_image(row):.3f}" if row.seconds is not None else "-"
        peak = f"{row.peak_mib:.0f}" if row.peak_mib is not None else "-"
        lines.append(
            f"{row.store:<6} {row.step:<13} {row.images:>8} {work:>8} {cpu:>8} {per:>7} "
            f"{row.wall:>7.1f} {peak:>8} {cells[0]:>8} {cells[1]:>7} {cells[2]:>7} "
            f"{cells[3]:>10} {cells[4]:>7}  {row.problem or 'ok'}"
        )
    return lines


def _per_image(row: Measured) -> float:
    return (row.seconds or 0.0) * 1000 / row.images


def targets(rows: Sequence[Measured]) -> list[tuple[str, bool]]:
    """The issue's targets, for the largest N against the smallest (meant: 10^6 vs 10^4)."""
    out = []
    local = [r for r in rows if r.store == "local"]
    sizes = sorted({r.images for r in local})
    if not sizes:
        return []
    small, large = sizes[0], sizes[-1]
    at = {(r.step, r.images): r for r in local}
    for step in FORMATS:
        big, base = at.get((step, large)), at.get((step, small))
        if big is None:
            continue
        if big.peak_mib is None or big.seconds is None:
            out.append((f"{step} at {large}: {big.problem}", False))
            continue
        out.append((f"{step} at {large}: peak {big.peak_mib:.0f} MiB < 1024", big.peak_mib < 1024))
        if base is not None and large > small and base.peak_mib and base.seconds:
            rss, per = big.peak_mib / base.peak_mib, _per_image(big) / _per_image(base)
            out.append((f"{step} peak {rss:.2f}x of {small}'s <= 1.2x", rss <= 1.2))
            out.append((f"{step} ms/image {per:.2f}x of {small}'s <= 1.5x", per <= 1.5))
    plan = at.get(("plan", large))
    if plan is not None:
        if plan.seconds is None or plan.peak_mib is None:
            out.append((f"plan at {large}: {plan.problem}", False))
        else:
            out.append((f"plan at {large}: {plan.seconds:.1f} s < 60", plan.seconds < 60))
            out.append(
                (f"plan at {large}: peak {plan.peak_mib:.0f} MiB < 1024", plan.peak_mib < 1024)
            )
    return out


# -- S3 on loopback -----------------------------------------------------------------------------


@contextmanager
def loopback_s3() -> Iterator[str]:
    """A moto server in its own process, and the standard AWS variables pointing at it, for
    this process and every step's."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    saved = dict(os.environ)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"no S3 server at {url}") from None
                time.sleep(0.1)
        os.environ.update(
            {
                "AWS_ENDPOINT_URL_S3": url,
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_CONFIG_FILE": "/dev/null",
                "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            }
        )
        for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            os.environ.pop(name, None)
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield f"s3://{BUCKET}"
    finally:
        os.environ.clear()
        os.environ.update(saved)
        server.terminate()
        server.wait()


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--sizes", default="10000,100000", help="image counts, comma-separated (1e6 opt-in)"
    )
    parser.add_argument(
        "--steps",
        default=",".join(STEPS),
        help=f"comma-separated, from {', '.join((*STEPS, *EXTRA_STEPS))} (default: all but verify)",
    )
    parser.add_argument("--s3", action="store_true", help="also run on S3 on loopback (moto)")
    parser.add_argument("--s3-max", type=int, default=10_000, help="largest N run on S3")
    parser.add_argument(
        "--keep",
        metavar="DIR",
        help="synthesize here and keep it all; a later run with the same DIR and settings "
        "reuses the folders (S3 data goes with the server)",
    )
    parser.add_argument("--tmp", metavar="DIR", help="where to synthesize when not keeping")
    parser.add_argument(
        "--shard-size", type=int, default=None, help="images per shard (RunConfig's default)"
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="synthesis processes")
    parser.add_argument("--templates", type=int, default=128, help="class maps per image size")
    parser.add_argument("--variants", type=int, default=2, help="positions per class map")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-rss-gib", type=float, default=8.0, help="kill a step above this")
    parser.add_argument("--step-timeout", type=float, default=7200.0, help="seconds per step")
    parser.add_argument(
        "--ls-split",
        type=int,
        metavar="N",
        help="label-studio: N tasks to a file (export --split), not one label-studio.json",
    )
    parser.add_argument(
        "--drop-split",
        action="store_true",
        help="with --ls-split, on local disk: remove each tasks file as soon as it lands (its "
        "size is counted), for a run whose Label Studio export outgrows the disk",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        figures = run_step(spec)
        Path(spec["result"]).write_text(json.dumps(figures))
        return
    sizes = sorted(int(float(s)) for s in args.sizes.split(","))
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in (*STEPS, *EXTRA_STEPS)]
    if unknown:
        parser.error(f"unknown step {unknown[0]!r}")
    if args.shard_size is None:
        from pipeline.config import RunConfig

        args.shard_size = RunConfig.model_fields["shard_size"].default
    base = (
        Path(args.keep)
        if args.keep
        else Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.tmp))
    )
    base.mkdir(parents=True, exist_ok=True)
    try:
        rows = _bench(args, sizes, steps, base)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print("\n".join(table(rows)))
    met = targets(rows)
    if met:
        print(
            "\ntargets (the issue's, for 10^6 against 10^4; here the largest N against the "
            "smallest):"
        )
        for text, ok in met:
            print(f"  {'ok    ' if ok else 'MISSED'} {text}")
    if any(r.problem for r in rows):
        sys.exit(1)


def _bench(
    args: argparse.Namespace, sizes: list[int], steps: list[str], base: Path
) -> list[Measured]:
    from pipeline.run.manifest import ModelInfo, code_version

    logs = base / "logs"
    logs.mkdir(exist_ok=True)
    limit = args.max_rss_gib * 1024
    warm, wall, _, problem = measure(
        {"step": "warmup", "out": ""}, folder=logs, max_rss_mib=limit, timeout=args.step_timeout
    )
    if warm is None:
        raise SystemExit(f"warm-up: {problem}")
    model = ModelInfo.model_validate(warm["model"])
    bare, _, _, problem = measure(
        {"step": "imports", "out": ""}, folder=logs, max_rss_mib=limit, timeout=args.step_timeout
    )
    if bare is None:
        raise SystemExit(f"imports: {problem}")
    print(
        f"prelabel {code_version()}, Python {sys.version.split()[0]}, {os.cpu_count()} cores, "
        f"CPU capability {warm['capability']}, torch threads {warm['threads']}, "
        f"engine {warm['engine']}; model {model.ref} {model.model_version}; "
        f"shard size {args.shard_size}\npeak RSS of a step's Python before it reads anything: "
        f"{bare['peak_kib'] / 1024:.0f} MiB; of one that loaded the model: "
        f"{warm['peak_kib'] / 1024:.0f} MiB ({wall:.1f} s)",
        flush=True,
    )
    pool: list[Variant] = []  # made once, when a size is first synthesized
    rows: list[Measured] = []
    stores = [("local", sizes)]
    if args.s3:
        stores.append(("s3", [n for n in sizes if n <= args.s3_max]))
    for store, counts in stores:
        with loopback_s3() if store == "s3" else _nothing(base) as root:
            for count in counts:
                rows += _one_size(args, store, str(root), count, steps, model, pool, logs, limit)
    return rows


def _reused(kept: Path | None, settings: dict[str, Any]) -> Synthesized | None:
    """What an earlier run with the same --keep made with the same settings, if it did."""
    try:
        recorded = json.loads(kept.read_text()) if kept is not None else None
    except (OSError, ValueError):
        return None
    if not recorded or recorded.get("settings") != settings:
        return None
    return Synthesized(**recorded["made"])


@contextmanager
def _nothing(base: Path) -> Iterator[Path]:
    yield base


def _one_size(
    args: argparse.Namespace,
    store: str,
    root: str,
    count: int,
    steps: list[str],
    model: ModelInfo,
    pool: list[Variant],
    logs: Path,
    limit: float,
) -> list[Measured]:
    where = f"{root}/{store}-n{count}" if store == "s3" else str(Path(root) / f"{store}-n{count}")

    def say(message: str) -> None:
        print(f"  {store} N={count}: {message}", flush=True)

    kept = Path(where, "synthesized.json") if store == "local" and args.keep else None
    settings = {
        "images": count,
        "seed": args.seed,
        "shard_size": args.shard_size,
        "templates": args.templates,
        "variants": args.variants,
        "model_version": model.model_version,
    }
    made = _reused(kept, settings)
    if made is None:
        if store == "local":
            shutil.rmtree(where, ignore_errors=True)
        if not pool:
            start = time.perf_counter()
            with _executor(args.jobs) as executor:
                pool += make_pool(args.seed, args.templates, args.variants, executor)
            say(f"traced {len(pool)} class maps, for every N ({time.perf_counter() - start:.1f} s)")
        made = synthesize(
            where,
            count,
            model=model,
            shard_size=args.shard_size,
            seed=args.seed,
            jobs=args.jobs,
            pool=pool,
            log=say,
        )
        if kept is not None:
            kept.write_text(json.dumps({"settings": settings, "made": dataclasses.asdict(made)}))
    else:
        say(f"reusing {where}")
    say(
        f"synthesized {made.images} images ({made.failed} failed), {made.regions} regions in "
        f"{made.shards} shards; {made.listed} in the source; "
        + ", ".join(f"{k} {v}" for k, v in made.stats.items())
    )
    # A plan first, as every rerun begins: it brings what the ledger derives from the shards
    # (an index, where this prelabel keeps one) up to date, as the run that wrote them would.
    first = {"step": "plan", "source": made.source, "out": made.out, "shard_size": args.shard_size}
    _, wall, _, problem = measure(first, folder=logs, max_rss_mib=limit, timeout=args.step_timeout)
    say(f"a first plan, not measured: {problem or f'{wall:.1f} s'}")
    rows = []
    for step in steps:
        spec = {
            "step": step,
            "source": made.source,
            "out": made.out,
            "truth": made.truth,
            "shard_size": args.shard_size,
            "ls_split": args.ls_split,
            "drop_split": args.drop_split and store == "local",
        }
        figures, wall, seen, problem = measure(
            spec, folder=logs, max_rss_mib=limit, timeout=args.step_timeout
        )
        row = Measured(
            step, store, made.images, None, None, wall, seen or None, figures or {}, problem
        )
        if figures is not None:
            row.seconds, row.cpu = figures["seconds"], figures.get("cpu")
            row.peak_mib = figures["peak_kib"] / 1024
            row.problem = check(step, figures, made)
        rows.append(row)
        size = f", wrote {row.figures['MiB']:.0f} MiB" if "MiB" in row.figures else ""
        say(
            f"{step}: {row.seconds or 0:.2f} s (cpu {row.cpu or 0:.2f} s), peak "
            f"{row.peak_mib or 0:.0f} MiB, wall {row.wall:.1f} s{size}; {row.problem or 'ok'}"
        )
        if not args.keep and store == "local":
            for name in ("exports", "evaluations"):
                shutil.rmtree(Path(made.out) / name, ignore_errors=True)
    if not args.keep and store == "local":
        shutil.rmtree(where, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
