"""Prefect's cost: the same images through the annotate flow and through the plain function.

    python bench/bench_prefect.py [--images 2000] [--size 48] [--shard-size 256]

Writes ``--images`` generated scenes of ``--size`` px square (small, so the model is cheap and
the orchestration is what shows), then times, in this one process and on the same images with
the bundled demo model:
  1. ``pipeline.labeling.annotate.annotate`` (no Prefect),
  2. ``flows.annotate.annotate_flow`` on the ephemeral Prefect server (one task per shard,
     artifacts), after a warm-up flow has started the server (its start, printed separately,
     is paid once per process, not per run),
alternating the two ``--repeats`` times, and prints the median wall times and the overhead
ratio (flow / plain; target <= 1.05).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from deeplab.scenes import scenes
from pipeline.config import RunConfig
from pipeline.labeling.annotate import annotate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect import flow

    from flows.annotate import annotate_flow

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = root / "images"
        source.mkdir()
        for i, scene in enumerate(scenes(1, args.images, height=args.size, width=args.size)):
            Image.fromarray(scene.image).save(source / f"{i:05d}.png")

        def config(name: str) -> RunConfig:
            return RunConfig(
                source=str(source),
                out=str(root / name),
                device=args.device,
                shard_size=args.shard_size,
            )

        annotate(config("warm-up"))  # model load and first-call costs, paid by neither side

        start = time.perf_counter()
        flow(name="warm-up")(lambda: None)()
        server_start = time.perf_counter() - start

        plain_times, flow_times = [], []
        for n in range(args.repeats):  # alternated, so drift on a shared machine hits both
            start = time.perf_counter()
            plain = annotate(config(f"plain-{n}"))
            plain_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            flowed = annotate_flow(config(f"flow-{n}"))
            flow_times.append(time.perf_counter() - start)
            assert plain.labeled == flowed.labeled == args.images

    plain_s, flow_s = statistics.median(plain_times), statistics.median(flow_times)
    shards = -(-args.images // args.shard_size)
    print(
        f"{args.images} images {args.size}x{args.size}, {shards} shards, demo model on "
        f"{args.device}, median of {args.repeats} alternated runs; ephemeral Prefect server "
        f"start (once per process): {server_start:.1f} s"
    )
    print(f"{'path':<22} {'wall s':>8} {'img/s':>8}")
    print(f"{'plain function':<22} {plain_s:>8.2f} {args.images / plain_s:>8.1f}")
    print(f"{'Prefect flow':<22} {flow_s:>8.2f} {args.images / flow_s:>8.1f}")
    print(f"overhead ratio flow / plain: {flow_s / plain_s:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
