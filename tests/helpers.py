"""Test-only helpers shared by several test modules."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch import nn

from deeplab.scenes import scenes
from pipeline.run.layout import RunLayout
from pipeline.run.ledger import LatestRows
from pipeline.run.manifest import ModelInfo
from pipeline.run.view import RunView
from pipeline.storage import LocalStorage

TIMING = ["read_ms", "decode_ms", "predict_ms", "regions_ms"]


def randomize_batchnorm_(model: nn.Module, seed: int = 1) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters.

    With the defaults (mean 0, var 1, weight 1, bias 0) two models with swapped or missing BN
    buffers would still agree; random values make such a mistake visible in the outputs.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def rasterize(polygons: Sequence[Sequence[Sequence[float]]], height: int, width: int) -> np.ndarray:
    """The reference rasterizer: pycocotools fills each ring; exteriors minus their holes,
    unioned over polygons."""

    def fill(ring: Sequence[float]) -> np.ndarray:
        rle = mask_utils.frPyObjects([list(ring)], height, width)
        return np.asarray(mask_utils.decode(rle)[:, :, 0], bool)

    out = np.zeros((height, width), bool)
    for exterior, *holes in polygons:
        part = fill(exterior)
        for hole in holes:
            part &= ~fill(hole)
        out |= part
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def make_images(
    folder: Path, count: int, *, seed: int = 40, size: tuple[int, int] = (96, 128)
) -> None:
    """``count`` scenes the demo model knows, as PNG files ``img-NN.png``; size is (h, w)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(scenes(seed, count, height=size[0], width=size[1])):
        Image.fromarray(scene.image).save(folder / f"img-{i:02d}.png")


def merged(out: Path) -> tuple[pa.Table, pa.Table]:
    """A local run folder's latest images rows and their regions, as exporters read them."""
    return latest(RunLayout(LocalStorage(), str(out)))


def latest(layout: RunLayout) -> tuple[pa.Table, pa.Table]:
    """The latest full images rows of a run folder and their regions, as exporters read them."""
    unnamed = ModelInfo(ref="", arch="", source="", model_version="", class_names=())
    view = RunView(layout, unnamed, None, LatestRows.load(layout))
    return view.images, view.regions


def comparable(images: pa.Table) -> list[dict[str, object]]:
    """What a rerun must reproduce: everything but timings and which shard file holds a row."""
    rows: list[dict[str, object]] = images.drop_columns([*TIMING, "shard", "etag"]).to_pylist()
    return rows


def assert_same_labels(out: Path, reference: Path) -> None:
    """Two local run folders hold the same labels: rows, regions and COCO file."""
    images, regions = merged(out)
    ref_images, ref_regions = merged(reference)
    assert comparable(images) == comparable(ref_images)
    assert regions.equals(ref_regions)
    coco = (out / "exports" / "coco.json").read_bytes()
    assert coco == (reference / "exports" / "coco.json").read_bytes()


def slow_reads(seconds: float) -> dict[str, str]:
    """Environment for a prelabel process whose every local image read takes ``seconds``
    longer (tests/slow_reads/sitecustomize.py): a run still at work when a test acts on it,
    however fast the machine. Pass ``--workers 1`` too, so reads do not overlap."""
    site = str(Path(__file__).parent / "slow_reads")
    return {"SLOW_READ_SECONDS": str(seconds), "PYTHONPATH": os.pathsep.join([site, *sys.path])}


def record_reads(
    monkeypatch: pytest.MonkeyPatch, label: Callable[[str], str] = lambda uri: uri
) -> list[str]:
    """Every later ``LocalStorage.read``, as ``label`` names its URI, in order."""
    reads: list[str] = []
    real = LocalStorage.read

    def counted(self: LocalStorage, uri: str) -> bytes:
        reads.append(label(uri))
        return real(self, uri)

    monkeypatch.setattr(LocalStorage, "read", counted)
    return reads
