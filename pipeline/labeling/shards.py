"""A shard: a few hundred images read, decoded, predicted, turned into regions and written.

The shard is the unit of work for orchestration (one task each), for retries and for resume;
its two Parquet files appear whole when it ends, or not at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import cv2
import torch

import deeplab
from pipeline.config import RunConfig
from pipeline.labeling import coco_ahead, progress
from pipeline.labeling.classes import label_space
from pipeline.labeling.decode import DecodedImage, DecodeError, decode_image
from pipeline.labeling.models import batch_size_for, load_predictor
from pipeline.labeling.records_writer import RecordsWriter
from pipeline.labeling.shard_plan import Shard, ShardStats, image_id_for, shard_stats
from pipeline.labeling.tracing import Traced, default_workers, trace, tracer
from pipeline.run.layout import RunLayout
from pipeline.run.lease import verify as verify_lease
from pipeline.run.records import ImageRecord
from pipeline.run.tables import images_table, write_table
from pipeline.storage import ObjectInfo, StorageError, printable, storage_for

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class _Loaded:
    item: ObjectInfo
    image: DecodedImage | None
    error: str | None
    read_ms: float
    decode_ms: float
    retryable: bool = False  # the bytes could not be read: not the file's fault
    content_hash: str | None = None


@dataclass(slots=True)
class _Outputs:
    images: list[ImageRecord] = field(default_factory=list)
    coco: dict[str, bytes] = field(default_factory=dict)  # each image's, when asked for


def process_shard(shard: Shard, config: RunConfig) -> ShardStats:
    """Label every image of the shard and write ``records/`` and ``images/`` for it.

    Reading and decoding run ahead in threads; regions are traced in worker processes
    (``pipeline.labeling.tracing``) while the next batch is in the model."""
    predictor = load_predictor(config)
    source = storage_for(config.source, config)
    tiling = config.large_images == "tile"
    # Tiling keeps full resolution; max_pixels still bounds what is decoded.
    max_side = config.max_pixels if tiling else config.max_side
    batch_size = batch_size_for(config, predictor.device)
    on_gpu = predictor.device.type != "cpu"
    workers = config.post_workers
    # On a CPU the forward already uses every core: the tracing processes yield to it and
    # take the cycles it leaves idle (measured 5% faster end to end than taking turns).
    pool = tracer(
        default_workers(predictor.device.type) if workers is None else workers,
        yielding=not on_gpu,
    )

    def load(item: ObjectInfo) -> _Loaded:
        t0 = time.perf_counter()
        try:
            data = source.read(item.uri)
        except StorageError as exc:
            return _Loaded(item, None, str(exc), _ms(t0), 0.0, retryable=True)
        read_ms, t1 = _ms(t0), time.perf_counter()
        try:
            image = decode_image(item.uri, data, max_side=max_side, max_pixels=config.max_pixels)
        except DecodeError as exc:
            digest = hashlib.sha256(data).hexdigest()
            return _Loaded(item, None, str(exc), read_ms, _ms(t1), content_hash=digest)
        return _Loaded(item, image, None, read_ms, _ms(t1))

    def late(item: ObjectInfo) -> _Loaded:
        reason = f"{item.uri}: cannot read (no answer in {config.read_timeout:g} s)"
        return _Loaded(item, None, reason, config.read_timeout * 1000, 0.0, retryable=True)

    buckets: dict[tuple[int, ...], list[_Loaded]] = defaultdict(list)
    records = RecordsWriter(item.key for item in shard.items)
    labeler = _Labeler(predictor, config, shard.shard_id, pool, records, ahead=2 * batch_size)
    reader = ThreadPoolExecutor(config.workers, thread_name_prefix="decode")
    try:
        loads = _bounded_map(
            reader, load, shard.items, ahead=2 * config.workers, timeout=config.read_timeout
        )
        for loaded in (late(item) if result is None else result for item, result in loads):
            if loaded.image is None:
                labeler.failed(loaded)
            elif tiling and max(loaded.image.pixels.shape[:2]) > config.tile_size:
                labeler.tiled(loaded, batch_size)
            else:
                bucket = buckets[loaded.image.pixels.shape]
                bucket.append(loaded)
                if len(bucket) == batch_size:
                    labeler.batch(bucket)
                    bucket.clear()
        for bucket in buckets.values():
            if bucket:
                labeler.batch(bucket)
        out = labeler.finish()
        encoded = records.finish()
    finally:
        # A read stuck in the kernel cannot be called off: never wait on one to end.
        reader.shutdown(wait=False, cancel_futures=True)
        records.abandon()

    # Batches follow image sizes, not names: order rows by key so outputs don't depend on it
    # (the records writer orders them so too).
    out.images.sort(key=lambda r: r.key)
    layout = RunLayout(storage_for(config.out, config), config.out)
    verify_lease(layout.storage, layout.lease, shard.lease)
    # Records first: the images file is what the ledger reads, so it must come last.
    layout.storage.write_atomic(layout.records(shard.shard_id), encoded)
    write_table(layout.storage, layout.images(shard.shard_id), images_table(out.images))
    if "coco" in config.exports:
        coco_ahead.keep(shard.lease, shard.shard_id, out.coco)
    progress.shard_saved(len(out.images))
    return shard_stats(shard.shard_id, (r.row() for r in out.images))


class _Labeler:
    """Predictions in, records out. Each prediction's regions are traced by ``pool``; at
    most ``ahead`` images wait there while the model runs on, so memory stays bounded."""

    def __init__(
        self,
        predictor: deeplab.Predictor,
        config: RunConfig,
        shard_id: str,
        pool: Executor,
        records: RecordsWriter,
        *,
        ahead: int,
    ) -> None:
        self.predictor, self.config, self.shard_id = predictor, config, shard_id
        self.pool, self.records, self.ahead = pool, records, ahead
        self.space = label_space(
            predictor.meta.class_names,
            keep=config.classes,
            rename=config.class_map,
            background=config.regions.background,
        )
        self.out = _Outputs()
        # Each row waits for its figures: they are filled in when its tracing returns.
        self.pending: deque[tuple[ImageRecord, Future[Traced]]] = deque()

    def failed(self, loaded: _Loaded) -> None:
        self.out.images.append(_failed(loaded, self.shard_id, self.predictor.meta, self.config))
        self.records.add(loaded.item.key, None)
        progress.advanced(1, failed=1)

    def batch(self, batch: list[_Loaded]) -> None:
        images = [b.image for b in batch if b.image is not None]
        t0 = time.perf_counter()
        predictions = _predict_halving(self.predictor, images)
        predict_ms = _ms(t0) / len(images)
        for loaded, image, prediction in zip(batch, images, predictions, strict=True):
            if prediction is None:
                self._in_tiles(loaded, image)
                continue
            inference = "downscaled" if image.scale < 1 else "whole"
            self._submit(loaded, image, prediction, predict_ms, inference)
        self._wait(self.ahead)

    def _in_tiles(self, loaded: _Loaded, image: DecodedImage) -> None:
        """An image the device cannot hold whole, in tiles half its size (or the configured
        tile, if smaller), one at a time; when even those do not fit, a failed row (retryable:
        another machine may hold it), never a failed shard."""
        tile = max(64, min(self.config.tile_size, max(image.pixels.shape[:2]) // 2))
        t0 = time.perf_counter()
        try:
            tiled = self.predictor.predict_tiled(
                image.pixels, tile=tile, overlap=min(self.config.tile_overlap, tile // 4)
            )
        except torch.OutOfMemoryError:
            _free(self.predictor)
            reason = f"{image.uri}: out of device memory, even in {tile} px tiles one at a time"
            self.failed(
                dataclasses.replace(
                    loaded,
                    image=None,
                    error=reason,
                    retryable=True,
                    content_hash=image.content_hash,
                )
            )
            return
        log.warning("%s: out of device memory whole; labeled in %d px tiles", image.uri, tile)
        self._submit(loaded, image, _at_size(tiled, image.height, image.width), _ms(t0), "tiled")

    def tiled(self, loaded: _Loaded, batch_size: int) -> None:
        assert loaded.image is not None
        t0 = time.perf_counter()
        prediction = self.predictor.predict_tiled(
            loaded.image.pixels,
            tile=self.config.tile_size,
            overlap=self.config.tile_overlap,
            batch_size=batch_size,
        )
        self._submit(loaded, loaded.image, prediction, _ms(t0), "tiled")
        self._wait(self.ahead)

    def finish(self) -> _Outputs:
        self._wait(0)
        return self.out

    def _submit(
        self,
        loaded: _Loaded,
        image: DecodedImage,
        prediction: deeplab.Prediction,
        predict_ms: float,
        inference: str,
    ) -> None:
        row = _labeled(
            loaded, image, predict_ms, inference, self.shard_id, self.predictor, self.config
        )
        traced = self.pool.submit(
            trace,
            self.space.apply(prediction.class_map),
            prediction.confidence,
            image_id=row.image_id,
            lineage=f"{row.content_hash}:{row.model_version}:{row.config_hash}",
            class_names=self.space.names,
            policy=self.config.regions,
            low_confidence=self.config.low_confidence,
            coco_size=(image.height, image.width) if "coco" in self.config.exports else None,
        )
        self.pending.append((row, traced))

    def _wait(self, ahead: int) -> None:
        while len(self.pending) > ahead:
            row, traced = self.pending.popleft()
            result = traced.result()
            doubt = result.doubt
            self.out.images.append(
                dataclasses.replace(
                    row,
                    region_count=result.rows.num_rows,
                    mean_confidence=doubt.mean_confidence,
                    low_confidence_share=doubt.low_confidence_share,
                    boundary_uncertainty=doubt.boundary_uncertainty,
                    fragments=doubt.fragments,
                    review_priority=doubt.review_priority,
                    regions_ms=result.milliseconds,
                )
            )
            self.records.add(row.key, result.rows)
            if result.coco is not None:
                self.out.coco[row.image_id] = result.coco
            progress.advanced(1)


def _labeled(
    loaded: _Loaded,
    image: DecodedImage,
    predict_ms: float,
    inference: str,
    shard_id: str,
    predictor: deeplab.Predictor,
    config: RunConfig,
) -> ImageRecord:
    """The row of a labeled image, before its regions are traced."""
    return _row(
        loaded,
        shard_id,
        predictor.meta,
        config,
        status="ok",
        content_hash=image.content_hash,
        width=image.width,
        height=image.height,
        model_width=image.pixels.shape[1],
        model_height=image.pixels.shape[0],
        mode=image.mode,
        frames=image.frames,
        inference=inference,
        engine=predictor.engine.name,
        precision=predictor.precision,
        predict_ms=predict_ms,
    )


def _failed(
    loaded: _Loaded, shard_id: str, meta: deeplab.ModelMeta, config: RunConfig
) -> ImageRecord:
    log.warning("%s", printable(loaded.error or ""))
    return _row(
        loaded,
        shard_id,
        meta,
        config,
        status="failed",
        error=printable(loaded.error or ""),
        retryable=loaded.retryable,
        content_hash=loaded.content_hash,
    )


def _row(
    loaded: _Loaded, shard_id: str, meta: deeplab.ModelMeta, config: RunConfig, **fields: Any
) -> ImageRecord:
    """What every row holds, then ``fields``; what was not measured stays empty."""
    common: dict[str, Any] = {
        "image_id": image_id_for(loaded.item.key),
        "key": loaded.item.key,
        "uri": printable(loaded.item.uri),  # a table holds UTF-8; the name's bytes are in the key
        "shard": shard_id,
        "error": None,
        "retryable": False,
        "size_bytes": loaded.item.size,
        "etag": loaded.item.etag,
        "content_hash": None,
        "model_version": meta.model_version,
        "config_hash": config.labeling_hash,
        **dict.fromkeys(("width", "height", "model_width", "model_height", "mode", "frames")),
        **dict.fromkeys(("inference", "engine", "precision")),
        "region_count": 0,
        **dict.fromkeys(
            (
                "mean_confidence",
                "low_confidence_share",
                "boundary_uncertainty",
                "fragments",
                "review_priority",
            )
        ),
        "read_ms": loaded.read_ms,
        "decode_ms": loaded.decode_ms,
        "predict_ms": 0.0,
        "regions_ms": 0.0,
    }
    return ImageRecord(**(common | fields))


def _predict_halving(
    predictor: deeplab.Predictor, images: list[DecodedImage]
) -> list[deeplab.Prediction | None]:
    """Out of GPU memory, try the two halves: a batch size that fits most images must not fail
    a shard on one large bucket. None for an image that does not fit alone."""
    try:
        return list(
            predictor.predict([i.pixels for i in images], [(i.height, i.width) for i in images])
        )
    except torch.OutOfMemoryError:
        _free(predictor)
        if len(images) == 1:
            return [None]
        log.warning("out of device memory at batch %d; halving", len(images))
        half = len(images) // 2
        return _predict_halving(predictor, images[:half]) + _predict_halving(
            predictor, images[half:]
        )


def _free(predictor: deeplab.Predictor) -> None:
    if predictor.device.type == "cuda":
        torch.cuda.empty_cache()


def _at_size(prediction: deeplab.Prediction, height: int, width: int) -> deeplab.Prediction:
    """A prediction made on a downscaled image, brought to the original size (nearest)."""
    if prediction.class_map.shape == (height, width):
        return prediction
    return dataclasses.replace(
        prediction,
        class_map=cv2.resize(
            prediction.class_map, (width, height), interpolation=cv2.INTER_NEAREST
        ),
        confidence=cv2.resize(
            prediction.confidence, (width, height), interpolation=cv2.INTER_NEAREST
        ),
    )


def _bounded_map(
    pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], ahead: int, timeout: float
) -> Iterator[tuple[T, R | None]]:
    """``pool.map`` in order, but with at most ``ahead`` items in flight, so memory stays
    bounded however long the input is. An item whose call runs over ``timeout`` seconds
    comes back with None, and the rest go on without it."""
    pending: deque[tuple[T, Future[R], list[float]]] = deque()

    def call(item: T, began: list[float]) -> R:
        began.append(time.monotonic())
        return fn(item)

    for item in items:
        began: list[float] = []
        pending.append((item, pool.submit(call, item, began), began))
        while len(pending) >= ahead:
            head, future, started = pending.popleft()
            yield head, _within(future, started, timeout)
    while pending:
        head, future, started = pending.popleft()
        yield head, _within(future, started, timeout)


def _within(future: Future[R], began: list[float], timeout: float) -> R | None:
    """The call's result, or None once it has run ``timeout`` seconds (time spent waiting
    for a free thread does not count)."""
    while True:
        left = began[0] + timeout - time.monotonic() if began else timeout
        try:
            return future.result(timeout=max(left, 0.0))
        except TimeoutError:
            if future.done():
                raise  # the call itself raised it
            if began and time.monotonic() - began[0] >= timeout:
                return None


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000
