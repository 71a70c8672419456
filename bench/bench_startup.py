"""What a user waits for at the command line: help, the 8-image demo, a rerun with nothing to do.

    python bench/bench_startup.py [--rounds 3]

Each command runs as the user runs it (the installed ``prelabel`` script of this
interpreter's environment), on the bundled example images and demo model, in a fresh
temporary run folder; the rerun repeats the demo on the folder it left. Prints the median
wall time of each over ``--rounds`` rounds, with the CPU class the figures belong to.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PRELABEL = str(Path(sys.executable).with_name("prelabel"))


def timed(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([PRELABEL, *args], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"prelabel --help": [], "demo, 8 images": [], "rerun": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            out = Path(tmp) / f"run-{r}"
            times["prelabel --help"].append(timed("--help"))
            times["demo, 8 images"].append(timed("annotate", str(EXAMPLES), "--out", str(out)))
            times["rerun"].append(timed("annotate", str(EXAMPLES), "--out", str(out)))
            shutil.rmtree(out)
    print(
        f"CPU {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads; "
        f"median of {args.rounds} rounds"
    )
    for name, values in times.items():
        rounds = " ".join(f"{t:.2f}" for t in values)
        print(f"{name:<18} {statistics.median(values):>6.2f} s   ({rounds})")


if __name__ == "__main__":
    main()
