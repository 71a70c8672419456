"""Tiled inference: blending logic against exact references, and the real model's agreement."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

import deeplab
from deeplab.demo import DEMO_CHECKPOINT
from deeplab.scenes import scenes
from deeplab.tiling import predict_tiled, ramp, tile_starts
from pipeline.config import RunConfig
from pipeline.labeling.annotate import annotate
from tests.run.test_resume import merged


def pixelwise(batch: np.ndarray) -> torch.Tensor:
    """A "model" whose logits at each pixel depend on that pixel only, at full resolution:
    tiles must then reproduce whole-image logits up to interpolation at tile borders."""
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255
    weights = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.3, 0.3, 0.3]])
    return torch.einsum("nchw,kc->nkhw", x, weights) * 8


@pytest.mark.parametrize(
    ("length", "tile", "overlap", "starts"),
    [
        (100, 100, 10, [0]),
        (80, 100, 10, [0]),
        (190, 100, 10, [0, 90]),
        (191, 100, 10, [0, 46, 91]),
        (1000, 256, 32, [0, 186, 372, 558, 744]),
    ],
)
def test_tiles_cover_with_at_least_the_overlap(
    length: int, tile: int, overlap: int, starts: list[int]
) -> None:
    got = tile_starts(length, tile, overlap)
    assert got == starts
    assert got[-1] + min(tile, length) == max(length, min(tile, length))
    assert all(b - a <= tile - overlap for a, b in itertools.pairwise(got))


def test_ramp_never_reaches_zero_and_is_one_inside() -> None:
    w = ramp(10, begin_overlap=3, end_overlap=2)
    assert w.min() > 0 and w.max() == 1
    assert w[3:8].eq(1).all() and (w[:3].diff() > 0).all() and (w[8:].diff() < 0).all()


@pytest.mark.parametrize(("shape", "tile", "overlap"), [((300, 410), 128, 32), ((97, 700), 64, 16)])
def test_per_pixel_model_tiles_to_the_whole_image_result(
    shape: tuple[int, int], tile: int, overlap: int
) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    classes, confidence = predict_tiled(
        pixelwise, image, tile=tile, overlap=overlap, batch_size=3, device=torch.device("cpu")
    )
    whole = pixelwise(image[None])[0]
    probabilities = F.softmax(whole, dim=0)
    np.testing.assert_array_equal(classes.numpy(), whole.argmax(dim=0).numpy())
    np.testing.assert_allclose(confidence.numpy(), probabilities.max(dim=0).values, atol=1e-5)


@pytest.mark.slow
def test_demo_model_tiled_agrees_with_whole_image_inference() -> None:
    model, meta = deeplab.load(DEMO_CHECKPOINT)
    predictor = deeplab.Predictor(model, meta, device="cpu")
    image = next(scenes(4, 1, height=720, width=960)).image
    (whole,) = predictor.predict([image])
    tiled = predictor.predict_tiled(image, tile=640, overlap=256, batch_size=4)
    agreement = float((tiled.class_map == whole.class_map).mean())
    print(f"tiled vs whole: {agreement:.4%} of pixels agree")
    assert agreement >= 0.99


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, {"big.png": "whole", "small.png": "whole"}),
        ({"max_side": 160}, {"big.png": "downscaled", "small.png": "whole"}),
        (
            {"large_images": "tile", "tile_size": 160, "tile_overlap": 48, "max_side": 160},
            {"big.png": "tiled", "small.png": "whole"},
        ),
    ],
)
def test_the_large_image_policy_is_recorded_per_image(
    tmp_path: Path, fields: dict[str, object], expected: dict[str, str]
) -> None:
    source = tmp_path / "in"
    source.mkdir()
    Image.fromarray(next(scenes(5, 1, height=240, width=320)).image).save(source / "big.png")
    Image.fromarray(next(scenes(6, 1, height=96, width=128)).image).save(source / "small.png")
    out = tmp_path / "run"
    annotate(RunConfig(source=str(source), out=str(out), device="cpu", **fields))
    rows = {r["key"]: r for r in merged(out)[0].to_pylist()}
    assert {k: r["inference"] for k, r in rows.items()} == expected
    big = rows["big.png"]
    assert (big["width"], big["height"]) == (320, 240)
    seen = (big["model_width"], big["model_height"])
    assert seen == ((160, 120) if expected["big.png"] == "downscaled" else (320, 240))
