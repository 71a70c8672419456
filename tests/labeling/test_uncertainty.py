"""Review figures: each against a direct computation, and the priority against real errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from deeplab.scenes import scenes
from pipeline.config import RunConfig
from pipeline.geometry.policy import RegionPolicy
from pipeline.geometry.regions import image_regions
from pipeline.labeling.annotate import annotate
from pipeline.labeling.uncertainty import image_uncertainty
from tests.run.test_resume import merged


def test_figures_match_a_direct_computation() -> None:
    class_map = np.zeros((40, 60), np.uint8)
    class_map[10:30, 20:40] = 1
    confidence = np.full((40, 60), 250, np.uint8)
    confidence[10:30, 20:40] = 100  # the square is doubtful
    u = image_uncertainty(class_map, confidence, low_confidence=0.5, fragments=3)
    assert u.mean_confidence == pytest.approx(confidence.mean() / 255)
    assert u.low_confidence_share == pytest.approx((20 * 20) / (40 * 60))
    assert u.review_priority == pytest.approx(1 - confidence.mean() / 255)
    assert u.fragments == 3
    # The band: pixels within 2 px of the square's edge, on both sides.
    outer = np.zeros_like(class_map, bool)
    outer[8:32, 18:42] = True
    inner = np.zeros_like(class_map, bool)
    inner[12:28, 22:38] = True
    band = outer & ~inner
    assert u.boundary_uncertainty == pytest.approx(1 - confidence[band].mean() / 255)


@pytest.mark.parametrize("low", [0.0, 0.3, 0.5, 0.77, 1.0])
def test_figures_of_a_random_map_match_numpy_at_any_threshold(low: float) -> None:
    """Thresholds that fall between two confidence steps (0.3 * 255 = 76.5) count exactly the
    pixels under them."""
    rng = np.random.default_rng(3)
    class_map = rng.integers(0, 3, (37, 53), dtype=np.uint8)
    confidence = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    u = image_uncertainty(class_map, confidence, low_confidence=low, fragments=0)
    assert u.low_confidence_share == np.count_nonzero(confidence < low * 255) / confidence.size
    assert u.mean_confidence == pytest.approx(confidence.mean() / 255, abs=1e-12)
    window = np.lib.stride_tricks.sliding_window_view(np.pad(class_map, 2, mode="edge"), (5, 5))
    band = window.max(axis=(2, 3)) != window.min(axis=(2, 3))
    assert u.boundary_uncertainty == pytest.approx(1 - confidence[band].mean() / 255, abs=1e-12)


def test_a_map_without_boundaries_has_no_boundary_uncertainty() -> None:
    u = image_uncertainty(
        np.ones((8, 8), np.uint8), np.full((8, 8), 128, np.uint8), low_confidence=0.6, fragments=0
    )
    assert (u.boundary_uncertainty, u.low_confidence_share) == (0.0, 1.0)


def test_fragments_count_components_under_the_minimum_area() -> None:
    class_map = np.zeros((30, 30), np.uint8)
    class_map[2:10, 2:10] = 1  # kept
    class_map[20, 20] = 1  # speckle
    class_map[25:27, 3:5] = 2  # speckle (4 px)
    class_map[15:17, 15:18] = 2  # speckle (6 px) of the same class
    confidence = np.full((30, 30), 255, np.uint8)
    confidence[2:6, 2:10] = 60  # half the kept square is doubtful
    found = image_regions(class_map, confidence, image_id="a", policy=RegionPolicy(min_area=8))
    assert found.fragments == 3
    (region,) = found.regions
    assert region.low_confidence_share == pytest.approx(0.5)


def _ambiguous(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blurred, washed out and noisy: what a model is unsure about."""
    soft = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 2.5)
    grey = soft.mean(axis=2, keepdims=True)
    faded = 0.35 * soft + 0.65 * grey
    noisy = faded + rng.normal(0, 25, image.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


@pytest.mark.slow
def test_the_first_quarter_of_the_review_order_holds_most_wrong_pixels(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    source, truth = tmp_path / "in", {}
    source.mkdir()
    for i, scene in enumerate(scenes(300, 32, height=160, width=160)):
        image = scene.image if i % 2 == 0 else _ambiguous(scene.image, rng)
        Image.fromarray(image).save(source / f"{i:02d}.png")
        truth[f"{i:02d}.png"] = scene.mask
    out = tmp_path / "run"
    annotate(RunConfig(source=str(source), out=str(out), device="cpu", regions={"min_area": 1}))
    images, regions = merged(out)
    by_image: dict[str, list[dict[str, object]]] = {}
    for region in regions.to_pylist():
        by_image.setdefault(region["image_id"], []).append(region)
    wrong = {}
    for row in images.to_pylist():
        predicted = np.zeros_like(truth[row["key"]])
        for region in by_image.get(row["image_id"], []):
            shape = [row["height"], row["width"]]
            counts = str(region["rle"]).encode()
            mask = mask_utils.decode({"size": shape, "counts": counts}).astype(bool)
            predicted[mask] = region["class_id"]
        wrong[row["key"]] = int(np.count_nonzero(predicted != truth[row["key"]]))
    order = sorted(images.to_pylist(), key=lambda r: -r["review_priority"])
    first_quarter = sum(wrong[r["key"]] for r in order[: len(order) // 4])
    share = first_quarter / sum(wrong.values())
    print(f"first quarter of the review order holds {share:.1%} of the wrong pixels")
    assert share > 0.5
