"""Per architecture at 512x512 on this device: parameters, GMACs, and img/s at batch 1 and 8.

    python bench/bench_model.py [--device auto|cpu|cuda] [--size 512] [--output-stride 16]
                                [--models NAME ...] [--iters 3] [--precision float32|bfloat16]

Timing is the Predictor's forward + upsample + argmax on random uint8 images; one warm-up
pass per batch size is excluded; the figure is the median of ``--iters`` timed passes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import deeplab
from deeplab.flops import count_gmacs
from deeplab.predictor import resolve_device


def _images_per_second(predictor: deeplab.Predictor, batch: list[np.ndarray], iters: int) -> float:
    predictor.predict(batch)  # warm-up: allocator, cuDNN/oneDNN kernel choice
    times = []
    for _ in range(iters):
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        predictor.predict(batch)
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return len(batch) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--output-stride", type=int, default=16)
    # smp_* are the same networks in smp's layout: named, not benchmarked, by default
    papers = [m for m in deeplab.list_models() if not m.startswith("smp_")]
    parser.add_argument("--models", nargs="*", default=papers)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--precision", choices=["float32", "bfloat16", "float16"], default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(8)]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {device} ({where},"
        f" {torch.get_num_threads()} threads), torch {torch.__version__}, {args.size}x{args.size},"
        f" OS{args.output_stride}, 21 classes"
    )
    print(f"{'model':36} {'params M':>9} {'GMAC':>8} {'img/s b1':>9} {'img/s b8':>9}")
    for name in args.models:
        with torch.device("meta"):
            shape_only = deeplab.build(name, num_classes=21, output_stride=args.output_stride)
        gmacs = count_gmacs(shape_only.eval(), args.size, args.size)
        model = deeplab.build(name, num_classes=21, output_stride=args.output_stride)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        meta = deeplab.ModelMeta(
            arch=name,
            options={"output_stride": args.output_stride},
            class_names=tuple(f"c{i}" for i in range(21)),
        )
        predictor = deeplab.Predictor(model, meta, device=str(device), precision=args.precision)
        b1 = _images_per_second(predictor, images[:1], args.iters)
        b8 = _images_per_second(predictor, images, args.iters)
        print(f"{name:36} {params:9.2f} {gmacs:8.2f} {b1:9.2f} {b8:9.2f}", flush=True)


if __name__ == "__main__":
    main()
