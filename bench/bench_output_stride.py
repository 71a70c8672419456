"""What output stride buys and costs: the same weights at OS8, OS16 and OS32, in one run.

    python bench/bench_output_stride.py [--scenes 24] [--size 480x640] [--device cpu]
                                        [--model demo] [--rounds 3]

For each stride: GMACs of one image, img/s of the Predictor (batch 2, median of alternated
rounds), mIoU and boundary F1 (2 px) against the scenes' true masks, and the share of pixels
that agree with the stride the model was trained at. The demo model was trained at OS16;
running it at OS8 is DeepLab's "train at 16, infer at 8".
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import deeplab
from deeplab.flops import count_gmacs
from deeplab.metrics import confusion_matrix, mean_iou
from deeplab.scenes import Scene, scenes
from deeplab.stride import output_stride_of
from pipeline.labeling.model_ids import resolve_checkpoint
from pipeline.quality.evaluate import boundary_counts

STRIDES = (8, 16, 32)
BATCH = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=24)
    parser.add_argument("--size", default="480x640", help="HxW")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    model, meta = deeplab.load(resolve_checkpoint(args.model))
    trained = output_stride_of(meta)
    rendered = list(scenes(2024, args.scenes, height=height, width=width))
    images = [s.image for s in rendered]
    predictors = {}
    for stride in STRIDES:
        rebuilt, rebuilt_meta = deeplab.at_output_stride(model, meta, stride)
        predictors[stride] = deeplab.Predictor(rebuilt, rebuilt_meta, device=args.device)
    maps = {s: [p.class_map for p in _predict(predictors[s], images)] for s in STRIDES}
    seconds: dict[int, list[float]] = {s: [] for s in STRIDES}
    for _ in range(args.rounds):
        for stride in STRIDES:
            start = time.perf_counter()
            _predict(predictors[stride], images)
            if predictors[stride].device.type == "cuda":
                torch.cuda.synchronize()
            seconds[stride].append(time.perf_counter() - start)

    print(
        f"{meta.arch} ({args.model}, trained at OS{trained}), {args.scenes} scenes {width}x"
        f"{height}, device {predictors[trained].device}, {torch.get_num_threads()} threads, "
        f"batch {BATCH}, median of {args.rounds} alternated rounds"
    )
    print(
        f"{'stride':<7} {'GMAC':>7} {'img/s':>7} {'vs OS16':>8} {'mIoU':>7} "
        f"{'bound F1':>9} {'agree OS' + str(trained):>10}"
    )
    base = statistics.median(seconds[16])
    for stride in STRIDES:
        median = statistics.median(seconds[stride])
        with torch.device("meta"):
            shape_only = predictors[stride].meta.build()
        gmacs = count_gmacs(shape_only.eval(), height, width)
        miou, f1 = _quality(rendered, maps[stride], meta.num_classes)
        agree = np.mean([np.mean(a == b) for a, b in zip(maps[stride], maps[trained], strict=True)])
        print(
            f"OS{stride:<5} {gmacs:>7.2f} {args.scenes / median:>7.2f} {base / median:>7.2f}x "
            f"{miou:>7.4f} {f1:>9.4f} {agree:>9.2%}"
        )


def _predict(predictor: deeplab.Predictor, images: list[np.ndarray]) -> list[deeplab.Prediction]:
    out = []
    for i in range(0, len(images), BATCH):
        out += predictor.predict(images[i : i + BATCH])
    return out


def _quality(rendered: list[Scene], maps: list[np.ndarray], classes: int) -> tuple[float, float]:
    confusion = np.zeros((classes, classes), np.int64)
    counts = np.zeros(4, np.int64)
    for scene, class_map in zip(rendered, maps, strict=True):
        confusion += confusion_matrix(scene.mask, class_map, classes)
        counts += boundary_counts(scene.mask, class_map, 2)
    precision, recall = counts[0] / counts[1], counts[2] / counts[3]
    return mean_iou(confusion), float(2 * precision * recall / (precision + recall))


if __name__ == "__main__":
    main()
