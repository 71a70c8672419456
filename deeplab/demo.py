"""The bundled demo model: DeepLabV3+ MobileNetV3-Large trained from scratch on the project's
synthetic scenes, so a fresh clone labels images without downloading anything.

Reproduce it with ``python -m deeplab.demo train`` and check it with
``python -m deeplab.demo evaluate``; both print what they measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from deeplab.bundled import DEMO_CHECKPOINT
from deeplab.checkpoint import load, save
from deeplab.meta import ModelMeta
from deeplab.metrics import confusion_matrix, iou_per_class, mean_iou
from deeplab.model import DeepLab
from deeplab.predictor import Predictor
from deeplab.scenes import DEMO_CLASSES, render_scene, scenes
from deeplab.train import Batch, TrainConfig, train

log = logging.getLogger(__name__)

DEMO_ARCH = "deeplabv3plus_mobilenet_v3_large"
# Separable ASPP and decoder keep the file small (~19 MB in fp32) at the paper's 256 channels.
DEMO_OPTIONS: dict[str, int | bool] = {"output_stride": 16, "separable": True}
EVAL_SEED = 1_000_003  # never used for training: evaluation scenes are fresh


def scene_batches(seed: int, batch_size: int, size: int) -> Iterator[Batch]:
    """An endless stream of freshly rendered scenes, never one twice. Each is rendered at 1x to
    2x the crop size and cropped, so objects come at the pixel sizes of larger images too."""
    rng = np.random.default_rng(seed)
    while True:
        images, masks = [], []
        for _ in range(batch_size):
            side = int(rng.integers(size, 2 * size + 1))
            scene = render_scene(rng, height=side, width=side)
            y, x = rng.integers(0, side - size + 1, size=2)
            images.append(scene.image[y : y + size, x : x + size])
            masks.append(scene.mask[y : y + size, x : x + size])
        yield np.stack(images), np.stack(masks)


def train_demo(
    *,
    out: Path,
    steps: int,
    seed: int,
    batch_size: int,
    size: int,
    lr: float,
    precision: Literal["float32", "bfloat16"],
) -> ModelMeta:
    torch.manual_seed(seed)
    meta = ModelMeta(arch=DEMO_ARCH, options=dict(DEMO_OPTIONS), class_names=DEMO_CLASSES)
    model = meta.build()
    config = TrainConfig(steps=steps, lr=lr, precision=precision)
    start = time.perf_counter()
    logs = train(
        model, meta, scene_batches(seed, batch_size, size), config, device=torch.device("cpu")
    )
    seconds = time.perf_counter() - start
    model.eval()
    miou, _ = evaluate(model, meta, count=200, size=320)
    provenance = {
        "data": f"deeplab.scenes seed {seed}: {size}-{2 * size} px scenes cropped to {size}",
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "precision": precision,
        "seed": seed,
        "train_seconds": round(seconds),
        "final_loss": round(logs[-1].loss, 4),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "eval_miou_200_scenes_320": round(miou, 4),
    }
    return save(model, meta.model_copy(update={"provenance": provenance}), out)


def evaluate(
    model: DeepLab, meta: ModelMeta, *, count: int, size: int, seed: int = EVAL_SEED
) -> tuple[float, np.ndarray]:
    """mIoU and per-class IoU over ``count`` fresh ``size`` x ``size`` scenes."""
    predictor = Predictor(model, meta, device="cpu")
    total = np.zeros((meta.num_classes, meta.num_classes), np.int64)
    for scene in scenes(seed, count, height=size, width=size):
        prediction = predictor.predict([scene.image])[0]
        total += confusion_matrix(scene.mask, prediction.class_map, meta.num_classes)
    return mean_iou(total), iou_per_class(total)


def _main() -> None:
    parser = argparse.ArgumentParser(prog="python -m deeplab.demo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    t = commands.add_parser("train", help="train the demo model from scratch")
    t.add_argument("--out", type=Path, default=DEMO_CHECKPOINT)
    t.add_argument("--steps", type=int, default=5000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--size", type=int, default=192)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    e = commands.add_parser("evaluate", help="mIoU of a checkpoint on fresh scenes")
    e.add_argument("checkpoint", type=Path, nargs="?", default=DEMO_CHECKPOINT)
    e.add_argument("--count", type=int, default=200)
    e.add_argument("--size", type=int, default=320)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.command == "train":
        meta = train_demo(
            out=args.out,
            steps=args.steps,
            seed=args.seed,
            batch_size=args.batch_size,
            size=args.size,
            lr=args.lr,
            precision=args.precision,
        )
        print(json.dumps(meta.provenance, indent=2))
    else:
        model, meta = load(args.checkpoint)
        miou, per_class = evaluate(model, meta, count=args.count, size=args.size)
        pairs = zip(meta.class_names, per_class, strict=True)
        report = {name: round(float(v), 4) for name, v in pairs}
        print(
            json.dumps(
                {"miou": round(miou, 4), "iou": report, "scenes": args.count, "size": args.size},
                indent=2,
            )
        )


if __name__ == "__main__":
    _main()
