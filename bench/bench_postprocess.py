"""Post-processing cost: class map to regions, against a plain loop and the model forward.

    python bench/bench_postprocess.py [--sizes 512 2048] [--classes 8] [--maps 4] [--device cpu]

For each size, ``--maps`` class maps of smooth random blobs with ``--classes`` classes (the
kind of fragments a segmentation model gives) go through:
  1. prelabel's ``image_regions``, what a tracing worker runs (components, holes, RLE,
     fidelity gate);
  2. a plain loop as a script would write it: per class ``findContours`` + per component a
     full-image mask through ``pycocotools.encode`` (no holes, no fidelity check);
  3. the bundled demo model's forward on an image of that size (the Predictor: forward,
     upsample, argmax), once warmed up.
It prints ms per image, regions/s, and the ratios: prelabel / plain, and prelabel / forward
(post-processing must cost less than the forward on the same device, so < 1).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import cv2
import numpy as np
import numpy.typing as npt
import torch
from pycocotools import mask as mask_utils

import deeplab
from deeplab.demo import DEMO_CHECKPOINT
from pipeline.geometry.policy import RegionPolicy
from pipeline.geometry.regions import image_regions


def blobs(rng: np.random.Generator, size: int, classes: int) -> npt.NDArray[np.uint8]:
    """Argmax of smooth noise: blobs a few percent of the image across, with holes and islands."""
    coarse = rng.random((classes, size // 64, size // 64)).astype(np.float32)
    logits = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC) for c in coarse])
    return np.asarray(logits.argmax(axis=0), np.uint8)


def plain_loop(class_map: npt.NDArray[np.uint8]) -> int:
    """What a hand-written script does: contours per class, a full-size mask per component."""
    count = 0
    for class_id in range(1, int(class_map.max()) + 1):
        mask = (class_map == class_id).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for contour in contours:
            if cv2.contourArea(contour) < 16:
                continue
            component = np.zeros_like(mask)
            cv2.drawContours(component, [contour], -1, 1, thickness=-1)
            rle = mask_utils.encode(np.asfortranarray(component & mask))
            mask_utils.area(rle)
            mask_utils.toBbox(rle)
            count += 1
    return count


def regions_of(
    maps: list[npt.NDArray[np.uint8]], confidence: npt.NDArray[np.uint8], policy: RegionPolicy
) -> int:
    return sum(
        len(image_regions(m, confidence, image_id="x", policy=policy).columns.rle) for m in maps
    )


def plain_regions_of(maps: list[npt.NDArray[np.uint8]]) -> int:
    return sum(plain_loop(m) for m in maps)


def forward_once(predictor: deeplab.Predictor, image: npt.NDArray[np.uint8]) -> int:
    predictor.predict([image])
    return 1


def timed(fn: Callable[[], int], repeats: int) -> tuple[float, int]:
    """Median seconds over ``repeats`` calls, and what one call returned."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[512, 2048])
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--maps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    model, meta = deeplab.load(DEMO_CHECKPOINT)
    predictor = deeplab.Predictor(model, meta, device=args.device)
    policy = RegionPolicy()
    print(
        f"{args.classes} classes, {args.maps} maps per size, median of {args.repeats}; "
        f"forward: demo model ({meta.arch}) on {predictor.device}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"{'size':>6} {'regions/img':>11} {'prelabel ms':>11} {'plain ms':>9} {'forward ms':>10}"
        f" {'prelabel reg/s':>14} {'plain reg/s':>11} {'vs plain':>8} {'vs forward':>10}"
    )
    rng = np.random.default_rng(0)
    for size in args.sizes:
        maps = [blobs(rng, size, args.classes) for _ in range(args.maps)]

        confidence = np.full((size, size), 200, np.uint8)
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        ours = partial(regions_of, maps, confidence, policy)
        plain = partial(plain_regions_of, maps)
        forward = partial(forward_once, predictor, image)
        ours_s, regions = timed(ours, args.repeats)
        plain_s, plain_regions = timed(plain, args.repeats)
        forward_s, _ = timed(forward, args.repeats)
        ours_ms, plain_ms = 1000 * ours_s / len(maps), 1000 * plain_s / len(maps)
        print(
            f"{size:>6} {regions / len(maps):>11.1f} {ours_ms:>11.1f} {plain_ms:>9.1f}"
            f" {1000 * forward_s:>10.1f} {regions / ours_s:>14.0f} {plain_regions / plain_s:>11.0f}"
            f" {plain_ms / ours_ms:>7.2f}x {ours_ms / (1000 * forward_s):>10.3f}"
        )


if __name__ == "__main__":
    main()
