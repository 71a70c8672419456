"""Peak memory of whole annotate runs over few and many images: it must not grow with the count.

    python bench/bench_memory.py [--counts 200 2000] [--size 64] [--device auto] [--limit 1.2]

For each count, that many generated scenes of ``--size`` x ``--size`` px are written as PNGs to a
temporary folder, and ``annotate`` (the bundled demo model, RunConfig's defaults) runs over them
in a fresh Python process, which reports its peak RSS (``ru_maxrss``) once the model is loaded and
when the run has ended, and the peak of its largest region-tracing worker process. It prints
each peak and its growth over the loaded model (what the run itself holds: the part that would
grow if something kept every image), then the ratio of the last count's peak (process plus
worker) to the first's, and exits 1 when that ratio is over ``--limit``: a run that streams
holds no more with ten times the images.
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


def run_once(source: str, out: str, device: str) -> None:
    """In the child process: one run, then its figures as one JSON line."""
    from pipeline.config import RunConfig
    from pipeline.labeling.annotate import annotate
    from pipeline.labeling.models import load_predictor

    config = RunConfig(source=source, out=out, device=device)
    load_predictor(config)  # cached for the run
    loaded_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    summary = annotate(config)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    worker_kib = _largest_child_peak_kib()
    figures = {"images": summary.labeled, "seconds": summary.seconds}
    print(
        json.dumps(
            {**figures, "loaded_kib": loaded_kib, "peak_kib": peak_kib, "worker_kib": worker_kib}
        )
    )


def _largest_child_peak_kib() -> int:
    """The highest VmHWM among this process's live children (the tracing workers). Their own
    figure: a spawned child's ru_maxrss also counts the parent's pages it had before exec."""
    peaks = [0]
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:  # it ended meanwhile
                continue
            peaks += [int(line.split()[1]) for line in status.splitlines() if "VmHWM" in line]
    return max(peaks)


def measure(count: int, size: int, device: str) -> dict[str, float]:
    # Imported here, not at the top: the run's tracing workers re-import this script.
    from PIL import Image

    from deeplab.scenes import scenes

    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        source = Path(tmp) / "images"
        source.mkdir()
        for n, scene in enumerate(scenes(count, count, height=size, width=size)):
            Image.fromarray(scene.image).save(source / f"{n:07d}.png")
        command = [sys.executable, __file__, "--run", str(source), str(Path(tmp) / "run")]
        done = subprocess.run(
            [*command, "--device", device], check=True, capture_output=True, text=True
        )
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    if figures["images"] != count:
        raise SystemExit(f"{count} images: only {figures['images']} labeled")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit", type=float, default=1.2)
    parser.add_argument("--run", nargs=2, metavar=("SOURCE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_once(*args.run, args.device)
        return
    print(f"{args.size}x{args.size} px scenes, demo model, device {args.device}")
    peaks = []
    for count in args.counts:
        start = time.perf_counter()
        figures = measure(count, args.size, args.device)
        peaks.append(figures["peak_kib"] + figures["worker_kib"])
        print(
            f"{count:>8} images: peak RSS {figures['peak_kib'] / 1024:8.1f} MiB,"
            f" {(figures['peak_kib'] - figures['loaded_kib']) / 1024:6.1f} MiB over the loaded"
            f" model; largest tracing worker {figures['worker_kib'] / 1024:6.1f} MiB"
            f" (run {figures['seconds']:.1f} s, with set-up {time.perf_counter() - start:.1f} s)"
        )
    if len(peaks) > 1:
        ratio = peaks[-1] / peaks[0]
        verdict = "ok" if ratio <= args.limit else "OVER"
        print(
            f"ratio {args.counts[-1]} / {args.counts[0]} images (labeling process plus its"
            f" largest tracing worker): {ratio:.3f}"
            f" (limit {args.limit}): {verdict}"
        )
        if ratio > args.limit:
            sys.exit(1)


if __name__ == "__main__":
    main()
