"""Synthetic scenes: deterministic, every class at many sizes, masks that match the pixels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from deeplab.scenes import DEMO_CLASSES, RING, Scene, _main, render_scene, scenes

REPO = Path(__file__).resolve().parents[2]
HEIGHT, WIDTH = 97, 131  # odd and unequal, so a transposed mask cannot pass
OBJECT_IDS = range(1, len(DEMO_CLASSES))


@pytest.fixture(scope="module")
def many() -> list[Scene]:
    return list(scenes(0, 200, height=HEIGHT, width=WIDTH))


def components(mask: np.ndarray, class_id: int, min_area: int = 1) -> list[np.ndarray]:
    """One boolean mask per 8-connected region of `class_id` with at least `min_area` pixels."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        (mask == class_id).astype(np.uint8), connectivity=8
    )
    return [labels == i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= min_area]


def test_same_seed_same_bytes_other_seed_differs() -> None:
    first = list(scenes(3, 4, height=HEIGHT, width=WIDTH))
    again = list(scenes(3, 4, height=HEIGHT, width=WIDTH))
    other = list(scenes(4, 4, height=HEIGHT, width=WIDTH))
    for a, b in zip(first, again, strict=True):
        assert a.image.tobytes() == b.image.tobytes()
        assert a.mask.tobytes() == b.mask.tobytes()
    assert [s.image.tobytes() for s in first] != [s.image.tobytes() for s in other]
    assert [s.mask.tobytes() for s in first] != [s.mask.tobytes() for s in other]


@pytest.mark.parametrize(("height", "width"), [(HEIGHT, WIDTH), (192, 192), (480, 640), (8, 8)])
def test_types_shapes_and_ranges(height: int, width: int) -> None:
    for scene in scenes(1, 5, height=height, width=width):
        assert scene.image.dtype == np.uint8
        assert scene.image.shape == (height, width, 3)
        assert scene.mask.dtype == np.uint8
        assert scene.mask.shape == (height, width)
        assert scene.mask.max() < len(DEMO_CLASSES)
        assert scene.image.std() > 1  # not a flat fill


def test_too_small_a_scene_names_the_size() -> None:
    with pytest.raises(ValueError, match="7x9 is under"):
        render_scene(np.random.default_rng(0), height=9, width=7)


def test_every_class_appears_small_and_large(many: list[Scene]) -> None:
    frame = HEIGHT * WIDTH
    for class_id in OBJECT_IDS:
        areas = [r.sum() / frame for s in many for r in components(s.mask, class_id)]
        assert len(areas) >= 50, DEMO_CLASSES[class_id]
        assert min(areas) < 0.005, DEMO_CLASSES[class_id]  # a few dozen pixels
        assert max(areas) > 0.05, DEMO_CLASSES[class_id]


def test_rings_have_holes(many: list[Scene]) -> None:
    # The frame edge can cut a hole open, so only rings clear of the edge count; an occluder
    # can still fill or split one, hence "most".
    with_hole, total = 0, 0
    for scene in many:
        ring = (scene.mask == RING).astype(np.uint8)
        contours, hierarchy = cv2.findContours(ring, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        for contour, (_, _, child, parent) in zip(
            contours, hierarchy[0] if contours else [], strict=True
        ):
            x, y, w, h = cv2.boundingRect(contour)
            inside_frame = x > 0 and y > 0 and x + w < WIDTH and y + h < HEIGHT
            if parent == -1 and inside_frame and cv2.contourArea(contour) >= 20:
                total += 1
                with_hole += child != -1
    assert total >= 30
    assert with_hole / total > 0.85


def test_regions_differ_from_a_band_just_outside(many: list[Scene]) -> None:
    # A mask that is shifted, transposed or drawn with other coordinates than the image would
    # put object pixels in the band and background pixels inside, and the means would meet.
    band_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))  # a 2 px band
    distances = []
    for scene in many:
        image = scene.image.astype(np.float64)
        for class_id in OBJECT_IDS:
            for region in components(scene.mask, class_id, min_area=20):
                grown = cv2.dilate(region.astype(np.uint8), band_kernel).astype(bool)
                band = grown & ~region
                inside, outside = image[region].mean(axis=0), image[band].mean(axis=0)
                distances.append(np.linalg.norm(inside - outside))
    assert len(distances) > 400
    assert min(distances) > 12
    assert np.median(distances) > 60


def test_cli_writes_what_scenes_renders(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "deeplab.scenes", "--out", str(tmp_path), "--count", "3"]
    cmd += ["--seed", "5", "--size", f"{WIDTH}x{HEIGHT}", "--masks"]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    names = [f"scene-{i:03d}" for i in range(3)]
    assert sorted(p.name for p in tmp_path.glob("*.jpg")) == [f"{n}.jpg" for n in names]
    for name, scene in zip(names, scenes(5, 3, height=HEIGHT, width=WIDTH), strict=True):
        mask = cv2.imread(str(tmp_path / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(mask, scene.mask)
        bgr = cv2.imread(str(tmp_path / f"{name}.jpg"), cv2.IMREAD_COLOR)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.int16)
        error = np.abs(rgb - scene.image).mean()  # JPEG smooths away much of the noise
        assert error < 8
        assert error < np.abs(rgb[..., ::-1] - scene.image).mean()  # channels not swapped


def test_cli_rejects_a_malformed_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _main(["--out", str(tmp_path), "--count", "1", "--size", "640*480"])
    assert exit_info.value.code == 2
    assert "'640*480' is not WxH" in capsys.readouterr().err
