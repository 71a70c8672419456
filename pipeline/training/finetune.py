"""Fine-tuning a checkpoint on reviewed labels, with the project's training loop.

The labels come in as a masks folder or COCO file (``quality.truth``), keyed like the images
under ``images``. Training sees random crops at a random scale, flipped half the time; pixels of
255 are ignored. A split of the images, made from each key's hash (so an image stays on its side
as the set grows), scores the model before and after; both figures, the data's hash and the
settings go into the checkpoint's provenance.

Class weights are applied by ignoring each pixel of class c with probability 1 - w_c (w scaled to
a maximum of 1): the expected loss is then the weighted one, since ``deeplab.train`` takes no
weights. The images are held in memory: this is for the small sets reviewers produce.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import cv2
import numpy as np
import numpy.typing as npt
import torch
from pydantic import JsonValue

import deeplab
from deeplab.classes import with_classes
from deeplab.meta import ModelMeta
from deeplab.metrics import IGNORE_INDEX, confusion_matrix, mean_iou
from deeplab.model import DeepLab
from deeplab.predictor import resolve_device
from deeplab.train import Batch, StepLog, TrainConfig, train
from pipeline.labeling.decode import DecodeError, decode_image, is_image_name
from pipeline.labeling.model_ids import resolve_checkpoint
from pipeline.quality.evaluate import percent
from pipeline.quality.truth import (
    CocoTruth,
    Truth,
    TruthError,
    check_names,
    open_truth,
)
from pipeline.storage import StorageError, is_uri, storage_for
from pipeline.training.config import CPU_STEPS, GPU_STEPS, FinetuneConfig, FinetuneError

_PAD = (124, 116, 104)  # ImageNet's mean colour: zero after normalization; its labels are ignored
_MIN_KEEP = 0.1  # class weights below a tenth of the largest would leave too few pixels
_TIMED_STEPS = 3  # the plan is told after these: step 1 pays one-off setup, 2 and 3 are timed


@dataclass(frozen=True, slots=True)
class Sample:
    key: str
    image: npt.NDArray[np.uint8]  # HxWx3 RGB
    mask: npt.NDArray[np.uint8]  # HxW class ids, 255 unlabeled
    image_sha256: str  # of the file
    mask_sha256: str  # of the mask's class ids as uint8 bytes, row by row


@dataclass(frozen=True, slots=True)
class Dataset:
    samples: list[Sample]
    unlabeled: list[str]  # images the labels do not cover
    failed: list[tuple[str, str]]  # (key, reason): unreadable image or label, sizes that differ


@dataclass(frozen=True, slots=True)
class Plan:
    """What the training will cost, measured on its first steps, so a user can stop early."""

    steps: int
    device: torch.device
    seconds_per_step: float
    seconds: float  # expected for all the steps


class Listener(Protocol):
    def stage(self, text: str) -> None: ...
    def planned(self, plan: Plan) -> None: ...  # once, after the first steps
    def step(self, entry: StepLog, steps: int) -> None: ...  # after every step


@dataclass(frozen=True, slots=True)
class FinetuneResult:
    out: str
    meta: ModelMeta  # as written: model_version and provenance filled in
    train_images: int
    val_images: int
    unlabeled: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]
    val_miou_before: float | None
    val_miou_after: float | None
    seconds: float
    classes: str  # what became of the starting model's classes

    def to_markdown(self) -> str:
        lines = [
            f"**{self.out}** (model {self.meta.model_version}): {self.train_images} training and "
            f"{self.val_images} validation images, {self.meta.provenance.get('steps')} steps in "
            f"{self.seconds:.0f} s",
            "",
            f"validation mIoU: {percent(self.val_miou_before)} before, "
            f"{percent(self.val_miou_after)} after",
            "",
            f"classes: {self.classes}",
        ]
        if self.unlabeled:
            lines.append(f"\n{len(self.unlabeled)} images had no label and were left out.")
        lines += [f"- not used: {key}: {reason}" for key, reason in self.failed]
        return "\n".join(lines)


def finetune(config: FinetuneConfig, listener: Listener | None = None) -> FinetuneResult:
    """Load, check, split, score, train, score again and write the checkpoint."""
    if is_uri(config.out):
        raise FinetuneError(f"{config.out}: checkpoints are written to a local path")
    out = Path(config.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FinetuneError(f"{out.parent}: cannot create the folder ({exc.strerror})") from exc
    try:
        device = resolve_device(config.device)
    except (ValueError, RuntimeError) as exc:  # torch.device raises RuntimeError on typos
        raise FinetuneError(f"device {config.device!r}: {exc}") from exc
    steps = default_steps(device) if config.steps is None else config.steps
    torch.manual_seed(config.seed)
    say = listener.stage if listener is not None else (lambda text: None)
    truth = open_truth(config.truth)
    init_model, init_meta = deeplab.load(resolve_checkpoint(config.init))
    names = class_names_for(init_meta, truth)
    check_names(truth, names)
    background = names.index("background") if "background" in names else 0
    say(f"reading images from {config.images}")
    data = load_dataset(config.images, truth, names, background, max_pixels=config.max_pixels)
    model, meta, classes = with_classes(init_model, init_meta, names)
    train_set, val_set = split(data.samples, config.val_share)
    say(f"scoring the starting model on {len(val_set)} validation images")
    before = val_miou(model, meta, val_set, device)
    keep = class_keep(train_set, len(names)) if config.class_weights == "auto" else None
    precision: Literal["float32", "bfloat16"] = "bfloat16" if device.type == "cuda" else "float32"
    schedule = TrainConfig(
        steps=steps,
        lr=config.lr,
        warmup_steps=min(100, max(1, steps // 10)),
        precision=precision,
        log_every=max(1, min(50, steps // 100)),
    )
    say(f"training on {len(train_set)} images ({device}, {precision}); timing the first steps")
    rng = np.random.default_rng(config.seed)
    batches = crops(
        train_set,
        batch_size=config.batch_size,
        crop=config.crop,
        scale=config.scale,
        keep=keep,
        rng=rng,
    )
    start = time.perf_counter()
    logs = train(
        model,
        meta,
        batches,
        schedule,
        device=device,
        on_step=_Progress(listener, steps, device) if listener else None,
    )
    seconds = time.perf_counter() - start
    say(f"scoring the trained model on {len(val_set)} validation images")
    after = val_miou(model, meta, val_set, device)
    provenance: dict[str, JsonValue] = {
        "finetuned_from": {"ref": config.init, "model_version": init_meta.model_version},
        "init_provenance": init_meta.provenance,
        "data": {
            "images": config.images,
            "labels": config.truth,
            "sha256": data_sha256(data.samples),
            "train_images": len(train_set),
            "val_images": len(val_set),
            "unlabeled_images": len(data.unlabeled),
            "failed_images": len(data.failed),
        },
        "classes": classes,
        "steps": steps,
        "batch_size": config.batch_size,
        "crop": config.crop,
        "scale": list(config.scale),
        "lr": config.lr,
        "class_weights": None
        if keep is None
        else {name: round(float(keep[i]), 4) for i, name in enumerate(names)},
        "precision": precision,
        "device": str(device),
        "seed": config.seed,
        "train_seconds": round(seconds, 1),
        "final_loss": round(logs[-1].loss, 4) if logs else None,
        "val_miou_before": None if before is None else round(before, 4),
        "val_miou_after": None if after is None else round(after, 4),
        "torch": torch.__version__,
    }
    saved = deeplab.save(model, meta.model_copy(update={"provenance": provenance}), out)
    return FinetuneResult(
        out=str(out),
        meta=saved,
        train_images=len(train_set),
        val_images=len(val_set),
        unlabeled=tuple(data.unlabeled),
        failed=tuple(data.failed),
        val_miou_before=before,
        val_miou_after=after,
        seconds=seconds,
        classes=classes,
    )


def default_steps(device: torch.device) -> int:
    """Fewer steps on a CPU, so that a first try finishes in minutes rather than an hour."""
    return CPU_STEPS if device.type == "cpu" else GPU_STEPS


class _Progress:
    """Passes every step on to the listener, and the plan once the first steps are timed."""

    def __init__(self, listener: Listener, steps: int, device: torch.device) -> None:
        self.listener, self.steps, self.device = listener, steps, device
        self.first = 0.0  # seconds of step 1

    def __call__(self, entry: StepLog) -> None:
        if entry.step == 1:
            self.first = entry.seconds
        if entry.step == min(_TIMED_STEPS, self.steps):
            timed = entry.step - 1
            per_step = (entry.seconds - self.first) / timed if timed else entry.seconds
            expected = self.first + per_step * (self.steps - 1)
            self.listener.planned(Plan(self.steps, self.device, per_step, expected))
        self.listener.step(entry, self.steps)


def class_names_for(init: ModelMeta, truth: Truth) -> tuple[str, ...]:
    """The starting model's classes when the labels use only those; else the labels' own:
    ``labelmap.txt`` order, or for COCO "background" then the categories."""
    if truth.names is None or set(truth.names) <= set(init.class_names):
        return init.class_names
    if isinstance(truth, CocoTruth):
        return ("background", *(name for name in truth.names if name != "background"))
    return truth.names


def load_dataset(
    images: str, truth: Truth, names: Sequence[str], background: int, *, max_pixels: int
) -> Dataset:
    """Every image under ``images`` that the labels cover, at full size, with its mask."""
    storage = storage_for(images)
    samples, unlabeled, failed = [], [], []
    try:
        listing = [info for info in storage.list(images) if is_image_name(info.key)]
    except StorageError as exc:
        raise FinetuneError(str(exc)) from exc
    for info in listing:
        if not truth.has(info.key):
            unlabeled.append(info.key)
            continue
        try:
            image = decode_image(
                info.uri, storage.read(info.uri), max_side=1 << 30, max_pixels=max_pixels
            )
            mask = truth.read(info.key, names, background)
        except (DecodeError, StorageError, TruthError) as exc:
            failed.append((info.key, str(exc)))
            continue
        if mask.shape != (image.height, image.width):
            reason = f"label is {mask.shape[1]}x{mask.shape[0]}, image {image.width}x{image.height}"
            failed.append((info.key, reason))
            continue
        samples.append(
            Sample(
                key=info.key,
                image=image.pixels,
                mask=mask,
                image_sha256=image.content_hash,
                mask_sha256=hashlib.sha256(np.ascontiguousarray(mask).tobytes()).hexdigest(),
            )
        )
    if not samples:
        raise FinetuneError(
            f"no image under {images} has a usable label in {truth.source} "
            f"({len(listing)} images, {len(unlabeled)} unlabeled, {len(failed)} failed"
            + (f": {failed[0][1]}" if failed else "")
            + ")"
        )
    return Dataset(samples, unlabeled, failed)


def data_sha256(samples: Sequence[Sample]) -> str:
    """sha256 over ``key<TAB>image sha256<TAB>mask sha256`` lines, sorted by key."""
    digest = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.key):
        digest.update(f"{s.key}\t{s.image_sha256}\t{s.mask_sha256}\n".encode())
    return digest.hexdigest()


def split(samples: Sequence[Sample], val_share: float) -> tuple[list[Sample], list[Sample]]:
    """(train, validation): an image validates when its key's hash falls under ``val_share``,
    so adding images never moves one across. With two or more images each side gets one."""

    def position(sample: Sample) -> float:
        return int(hashlib.sha256(sample.key.encode()).hexdigest()[:12], 16) / 16**12

    ranked = sorted(samples, key=position)
    cut = sum(position(s) < val_share for s in ranked)
    if len(ranked) >= 2 and val_share > 0:
        cut = min(max(cut, 1), len(ranked) - 1)
    return ranked[cut:], ranked[:cut]


def class_keep(samples: Sequence[Sample], num_classes: int) -> npt.NDArray[np.float64]:
    """Per label value, the chance a pixel is kept: 1/sqrt(pixel frequency) scaled to a
    maximum of 1 and floored at ``_MIN_KEEP``; 1 for unlabeled pixels and absent classes."""
    counts = np.zeros(num_classes, np.int64)
    for s in samples:
        labeled = s.mask[s.mask != IGNORE_INDEX]
        counts += np.bincount(labeled, minlength=num_classes)[:num_classes]
    keep = np.ones(256, np.float64)
    present = counts > 0
    weight = 1 / np.sqrt(counts[present] / counts.sum())
    keep[:num_classes][present] = np.maximum(weight / weight.max(), _MIN_KEEP)
    return keep


def crops(
    samples: Sequence[Sample],
    *,
    batch_size: int,
    crop: int,
    scale: tuple[float, float],
    keep: npt.NDArray[np.float64] | None,
    rng: np.random.Generator,
) -> Iterator[Batch]:
    """Endless batches of ``crop`` x ``crop`` windows: each from a random image at a random
    scale (log-uniform in ``scale``), flipped half the time; a window larger than the image is
    padded with ignored pixels. Only the window is resized, not the whole image."""
    low, high = math.log(scale[0]), math.log(scale[1])
    while True:
        images = np.empty((batch_size, crop, crop, 3), np.uint8)
        images[:] = _PAD
        masks = np.full((batch_size, crop, crop), IGNORE_INDEX, np.uint8)
        for i in range(batch_size):
            s = samples[int(rng.integers(len(samples)))]
            factor = math.exp(rng.uniform(low, high))
            height, width = s.mask.shape
            side = math.ceil(crop / factor)
            win_h, win_w = min(height, side), min(width, side)
            y, x = int(rng.integers(0, height - win_h + 1)), int(rng.integers(0, width - win_w + 1))
            out_h = min(crop, max(1, round(win_h * factor)))
            out_w = min(crop, max(1, round(win_w * factor)))
            smooth = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
            window = (slice(y, y + win_h), slice(x, x + win_w))
            image = cv2.resize(s.image[window], (out_w, out_h), interpolation=smooth)
            mask = cv2.resize(s.mask[window], (out_w, out_h), interpolation=cv2.INTER_NEAREST)
            if rng.random() < 0.5:
                image, mask = image[:, ::-1], mask[:, ::-1]
            if keep is not None:
                mask = np.where(rng.random(mask.shape) < keep[mask], mask, IGNORE_INDEX)
            oy, ox = int(rng.integers(0, crop - out_h + 1)), int(rng.integers(0, crop - out_w + 1))
            images[i, oy : oy + out_h, ox : ox + out_w] = image
            masks[i, oy : oy + out_h, ox : ox + out_w] = mask
        yield images, masks


def val_miou(
    model: DeepLab, meta: ModelMeta, samples: Sequence[Sample], device: torch.device
) -> float | None:
    """mIoU over the samples' full images, classes present in truth or prediction; leaves the
    model in eval mode (training puts it back)."""
    if not samples:
        return None
    predictor = deeplab.Predictor(model, meta, device=str(device))
    total = np.zeros((meta.num_classes, meta.num_classes), np.int64)
    for s in samples:
        predicted = predictor.predict([s.image])[0].class_map
        total += confusion_matrix(s.mask, predicted, meta.num_classes)
    return mean_iou(total) if total.sum() else None
