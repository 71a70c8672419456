"""Tiled inference on large images: agreement with the whole image, and memory as images grow.

    python bench/bench_tiling.py [--sizes 4000x3000 8000x6000] [--tile 1024] [--overlap 256]
                                 [--batch 4] [--device cpu]

Each measurement runs in a fresh Python process with the bundled demo model and a generated
scene of that size, and reports its peak RSS (``ru_maxrss``) and the RSS just before
inference (model loaded, image rendered): their difference is what inference itself holds.
For the first size the whole image also goes through the model in one pass, and the two class
maps are compared pixel by pixel (the target: >= 99.5% agree). Tiles are blended before the
argmax, so what memory tiling holds grows with the image's width (one band of tile rows) and
with its outputs (class map and confidence), not with the model's activations over the whole
image.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def measure(mode: str, width: int, height: int, args: argparse.Namespace, out: Path) -> None:
    """In the child: one inference, then its figures as one JSON line; the map goes to ``out``."""
    import torch

    import deeplab
    from deeplab.demo import DEMO_CHECKPOINT
    from deeplab.scenes import scenes

    torch.set_grad_enabled(False)
    model, meta = deeplab.load(DEMO_CHECKPOINT)
    predictor = deeplab.Predictor(model, meta, device=args.device)
    image = next(scenes(11, 1, height=height, width=width)).image
    before_kib = _rss_now_kib()
    start = time.perf_counter()
    if mode == "whole":
        (prediction,) = predictor.predict([image])
    else:
        prediction = predictor.predict_tiled(
            image, tile=args.tile, overlap=args.overlap, batch_size=args.batch
        )
    seconds = time.perf_counter() - start
    np.save(out, prediction.class_map)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_mb": before_kib / 1024, "peak_mb": peak_kib / 1024, "s": seconds}))


def _rss_now_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(mode: str, size: str, args: argparse.Namespace, out: Path) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", mode, size, str(out)]
    command += ["--tile", str(args.tile), "--overlap", str(args.overlap)]
    command += ["--batch", str(args.batch), "--device", args.device]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["4000x3000", "8000x6000"])
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--overlap", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "SIZE", "OUT"))
    args = parser.parse_args()
    if args.child:
        mode, size, out = args.child
        width, height = (int(v) for v in size.split("x"))
        measure(mode, width, height, args, Path(out))
        return
    print(
        f"demo model, {args.device}; tiles {args.tile} px, overlap {args.overlap}, "
        f"{args.batch} per batch; RSS in MB"
    )
    print(f"{'size':>10} {'mode':>6} {'s':>7} {'before':>8} {'peak':>8} {'inference':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        maps: dict[str, Path] = {}
        for i, size in enumerate(args.sizes):
            modes = ["whole", "tiled"] if i == 0 else ["tiled"]
            for mode in modes:
                maps[mode] = Path(tmp) / f"{mode}-{size}.npy"
                f = child(mode, size, args, maps[mode])
                print(
                    f"{size:>10} {mode:>6} {f['s']:>7.1f} {f['before_mb']:>8.0f} "
                    f"{f['peak_mb']:>8.0f} {f['peak_mb'] - f['before_mb']:>10.0f}"
                )
            if i == 0:
                agree = float(np.mean(np.load(maps["whole"]) == np.load(maps["tiled"])))
                print(f"{size}: tiled vs whole, {agree:.4%} of pixels agree (target >= 99.5%)")


if __name__ == "__main__":
    main()
