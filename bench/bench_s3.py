"""Reading images from an S3 endpoint on loopback: one reader thread against prelabel's default.

    python bench/bench_s3.py [--images 200] [--size 640x480] [--threads 1 8] [--rounds 3]

A moto S3 server runs in its own process on 127.0.0.1 (real HTTP and request signing); the
images are generated scenes stored as JPEGs. Each read goes through prelabel's ``S3Storage``
(boto3, standard retries, a connection pool sized to the threads), from a thread pool as a
shard reads: 1 thread, the default reader count (``RunConfig.workers``: the cores, up to 8)
and any ``--threads`` given. Prints images/s and MB/s per thread count (median of the
alternated rounds) and the ratio of the default to one thread.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import boto3  # type: ignore[import-untyped]
from PIL import Image

from deeplab.scenes import scenes
from pipeline.config import RunConfig
from pipeline.storage.s3 import S3Storage
from pipeline.storage.s3_settings import S3Settings

BUCKET = "bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for(url: str, process: subprocess.Popen[bytes]) -> None:
    host, port = url.removeprefix("http://").split(":")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the S3 server exited with {process.returncode}")
        try:
            socket.create_connection((host, int(port)), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"no S3 server at {url} after 30 s")


def read_all(storage: S3Storage, uris: list[str], threads: int) -> int:
    with ThreadPoolExecutor(threads) as pool:
        return sum(len(data) for data in pool.map(storage.read, uris))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--threads", type=int, nargs="*", default=[8])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    default = RunConfig(source="in", out="out").workers
    counts = sorted({1, default, *args.threads})
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    url = f"http://127.0.0.1:{_free_port()}"
    port = url.rsplit(":", 1)[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", port],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(url, server)
        client = boto3.client("s3", endpoint_url=url)
        client.create_bucket(Bucket=BUCKET)
        uris = []
        for i, scene in enumerate(scenes(3, args.images, height=height, width=width)):
            buffer = io.BytesIO()
            Image.fromarray(scene.image).save(buffer, "JPEG", quality=90)
            client.put_object(Bucket=BUCKET, Key=f"in/{i:05d}.jpg", Body=buffer.getvalue())
            uris.append(f"s3://{BUCKET}/in/{i:05d}.jpg")
        settings = S3Settings(endpoint_url=url, addressing_style="path")
        storages = {n: S3Storage(settings, threads=n) for n in counts}
        for n in counts:
            read_all(storages[n], uris[:n], n)  # connections open, clients warm
        seconds: dict[int, list[float]] = {n: [] for n in counts}
        total = 0
        for _ in range(args.rounds):
            for n in counts:
                start = time.perf_counter()
                total = read_all(storages[n], uris, n)
                seconds[n].append(time.perf_counter() - start)
    finally:
        server.terminate()
        server.wait()
    print(
        f"{args.images} JPEGs of {width}x{height} ({total / args.images / 1024:.0f} KiB each) "
        f"from moto on loopback, {os.cpu_count()} cores; median of {args.rounds} rounds"
    )
    print(f"{'threads':>8} {'img/s':>8} {'MB/s':>8}")
    rate = {}
    for n in counts:
        s = statistics.median(seconds[n])
        rate[n] = args.images / s
        mark = "  (default)" if n == default else ""
        print(f"{n:>8} {rate[n]:>8.1f} {total / s / 1e6:>8.1f}{mark}")
    print(f"default ({default} threads) / 1 thread: {rate[default] / rate[1]:.2f}x")


if __name__ == "__main__":
    main()
