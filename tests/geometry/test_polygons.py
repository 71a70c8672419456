"""Polygons against pycocotools' rasterizer: the rings must give back the mask's pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as mask_utils

from pipeline.geometry.polygons import (
    drawn_crossings,
    drawn_exactly,
    edge_rings,
    polygons_from_mask,
    simplified,
)
from pipeline.run.records import Ring
from tests.helpers import iou, rasterize


def corners(ring: Ring) -> set[tuple[float, float]]:
    return set(zip(ring[::2], ring[1::2], strict=True))


def mask_from_rows(*rows: str) -> np.ndarray:
    return np.array([[c == "#" for c in row] for row in rows], bool)


def blob_mask(rng: np.random.Generator, height: int, width: int, sigma: float) -> np.ndarray:
    """Smooth random blobs, pierced by pinholes: several parts, holes, islands in holes."""
    noise = cv2.GaussianBlur(rng.random((height, width)), (0, 0), sigma)
    return np.asarray((noise > np.median(noise)) & (rng.random((height, width)) > 0.01))


def square(size: int, *, at: int, image: int) -> np.ndarray:
    mask = np.zeros((image, image), bool)
    mask[at : at + size, at : at + size] = True
    return mask


@pytest.mark.parametrize(
    ("mask", "ring_counts"),
    [
        (square(50, at=3, image=57), [1]),  # centre-line contours would give back 2401 px
        (square(5, at=1, image=7), [1]),  # the brief's 5x5: 4 corners, 25 px
        (mask_from_rows("#"), [1]),  # 1-pixel image, 1-pixel region
        (mask_from_rows("...", ".#.", "..."), [1]),  # lone pixel inside an image
        (mask_from_rows("#######"), [1]),  # 1-pixel-wide horizontal line
        (mask_from_rows("#", "#", "#", "#"), [1]),  # 1-pixel-wide vertical line
        (mask_from_rows("#...", ".#..", "..#.", "...#"), [1]),  # diagonal: 8-connected, 1 part
        (mask_from_rows("##.", "#..", "..."), [1]),  # concave corner: not cut by the tracer
        (mask_from_rows("###", "#.#", "###"), [2]),  # one hole
        (mask_from_rows("####", "#..#", "#..#", "####"), [2]),  # bigger hole
        (mask_from_rows("###.", "#.#.", "####", "..##"), [2]),  # hole, shape runs on
        (mask_from_rows("#####", "#.#.#", "#####"), [3]),  # two holes
        (mask_from_rows("###", "#.#", "##."), [2]),  # hole touches the outside at a corner
        (mask_from_rows("###.", "#.#.", "##.#", "..##"), [3]),  # two holes touching at a corner
        (mask_from_rows("#####", "#...#", "#.#.#", "#...#", "#####"), [2, 1]),  # island in hole
        (mask_from_rows("#.#", "...", "#.#"), [1, 1, 1, 1]),  # four separate pixels
        (mask_from_rows(".#.", "#.#", ".#."), [2]),  # diamond of diagonals around a hole
    ],
)
@pytest.mark.parametrize("tolerance", [0.0, 0.5])
def test_rings_rasterize_back_to_the_mask_exactly(
    mask: np.ndarray, ring_counts: list[int], tolerance: float
) -> None:
    polygons = polygons_from_mask(mask, tolerance=tolerance)
    assert sorted(len(polygon) for polygon in polygons) == sorted(ring_counts)
    np.testing.assert_array_equal(rasterize(polygons, *mask.shape), mask)


@pytest.mark.parametrize(
    ("size", "at"),
    [
        (50, 3),  # 2500 px, not 2401
        (5, 1),  # 25 px
        (1, 0),  # a single pixel is a unit square
    ],
)
def test_square_is_its_four_corners(size: int, at: int) -> None:
    polygons = polygons_from_mask(square(size, at=at, image=size + 2 * at + 1))
    assert len(polygons) == 1
    (ring,) = polygons[0]
    far = float(at + size)
    assert len(ring) == 8
    assert corners(ring) == {(at, at), (far, at), (far, far), (at, far)}
    area = mask_utils.area(mask_utils.frPyObjects([list(ring)], 64, 64))
    assert area.tolist() == [size * size]


@pytest.mark.parametrize(
    "mask",
    [
        mask_from_rows("#"),  # 1 pixel
        mask_from_rows("########"),  # 1-pixel line
        mask_from_rows("#", "#", "#"),  # 1-pixel column
        mask_from_rows("###", "#.#", "###"),  # a 1-pixel hole
    ],
)
def test_rings_too_small_to_simplify_stay_exact(mask: np.ndarray) -> None:
    polygons = polygons_from_mask(mask, tolerance=10)
    assert all(len(ring) >= 6 for polygon in polygons for ring in polygon)
    np.testing.assert_array_equal(rasterize(polygons, *mask.shape), mask)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("sigma", [1.5, 4.0])
def test_random_blobs_keep_iou(seed: int, sigma: float) -> None:
    mask = blob_mask(np.random.default_rng(seed), 97, 131, sigma)
    polygons = polygons_from_mask(mask)
    assert any(len(polygon) > 1 for polygon in polygons)  # the case has holes
    assert len(polygons) > 1  # and several parts
    assert iou(rasterize(polygons, 97, 131), mask) >= 0.98
    exact = polygons_from_mask(mask, tolerance=0)
    np.testing.assert_array_equal(rasterize(exact, 97, 131), mask)


@settings(max_examples=300, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 24), st.integers(1, 24))))
def test_exact_rings_rasterize_to_any_mask(mask: np.ndarray) -> None:
    polygons = polygons_from_mask(mask, tolerance=0)
    np.testing.assert_array_equal(rasterize(polygons, *mask.shape), mask)
    assert all(float(v).is_integer() for p in polygons for ring in p for v in ring)


@settings(max_examples=300, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 24), st.integers(1, 24))))
def test_simplified_rings_are_pixel_corners_and_stay_close(mask: np.ndarray) -> None:
    polygons = polygons_from_mask(mask)
    assert all(float(v).is_integer() for p in polygons for ring in p for v in ring)
    assert all(len(ring) >= 6 for p in polygons for ring in p)
    assert iou(rasterize(polygons, *mask.shape), mask) >= 0.98


def test_offset_places_rings_in_image_coordinates() -> None:
    crop = mask_from_rows("##.", "###", ".#.")
    full = np.zeros((11, 9), bool)
    full[6:9, 4:7] = crop
    polygons = polygons_from_mask(crop, x0=4, y0=6)
    np.testing.assert_array_equal(rasterize(polygons, 11, 9), full)


def test_empty_mask_has_no_polygons() -> None:
    assert polygons_from_mask(np.zeros((4, 5), bool)) == ()


def test_mask_must_be_2d() -> None:
    with pytest.raises(ValueError, match="2-D"):
        polygons_from_mask(np.zeros((2, 2, 2), bool))


@settings(max_examples=500, deadline=None)
@given(st.data(), st.integers(1, 60), st.integers(1, 60))
def test_crossings_fill_what_pycocotools_draws(
    data: st.DataObject, height: int, width: int
) -> None:
    """Any polygon on whole pixel corners, self-crossing or not, at any slope: the parity fill
    of the computed crossings is pycocotools' own drawing, pixel for pixel."""
    points = np.array(
        data.draw(
            st.lists(
                st.tuples(st.integers(0, width), st.integers(0, height)), min_size=3, max_size=9
            )
        ),
        np.int32,
    )
    ring, position, unsure = drawn_crossings(points, np.array([len(points)]), height)
    assert not unsure.any() and (ring == 0).all()
    toggles = np.bincount(position, minlength=height * width + 1)[: height * width] % 2
    filled = (np.cumsum(toggles) % 2).reshape(width, height).T
    drawn = mask_utils.decode(mask_utils.frPyObjects([points.ravel().tolist()], height, width))
    np.testing.assert_array_equal(filled, drawn[:, :, 0])


def proofs(mask: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """For each traced ring of ``mask`` that simplifying at ``tolerance`` changed: whether
    ``drawn_exactly`` proves it draws as traced, and whether pycocotools draws it so."""
    chains, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if not chains:
        return np.zeros(0, bool), np.zeros(0, bool)
    rings = edge_rings(chains)
    traced = [rings.ring(i) for i in range(len(chains))]
    simple = [simplified(ring, tolerance) for ring in traced]
    changed = np.flatnonzero([len(s) < len(t) for s, t in zip(simple, traced, strict=True)])
    if not len(changed):
        return np.zeros(0, bool), np.zeros(0, bool)
    proven = drawn_exactly(
        np.concatenate([simple[i] for i in changed]),
        np.array([len(simple[i]) for i in changed]),
        changed,
        rings.crossings,
        mask.shape,
    )

    def drawn(ring: np.ndarray) -> bytes:
        return mask_utils.frPyObjects([ring.ravel().tolist()], *mask.shape)[0]["counts"]

    same = np.array([drawn(simple[i]) == drawn(traced[i]) for i in changed])
    return proven, same


@settings(max_examples=300, deadline=None)
@given(
    arrays(np.bool_, st.tuples(st.integers(2, 30), st.integers(2, 30))),
    st.sampled_from([0.5, 1.0, 1.5, 3.0]),
)
def test_a_ring_proven_drawn_exactly_is_so_drawn_by_pycocotools(
    mask: np.ndarray, tolerance: float
) -> None:
    proven, same = proofs(mask, tolerance)
    assert not (proven & ~same).any()


@pytest.mark.parametrize("seed", range(3))
def test_most_simplified_rings_are_proven_without_drawing(seed: int) -> None:
    """Blobs' rings at the default 0.5 px nearly all draw exactly, and are proven to; at
    1 px some do not, and those are not proven; at 3 px none does."""
    mask = blob_mask(np.random.default_rng(seed), 120, 160, 1.5)
    proven, same = proofs(mask, 0.5)
    assert len(proven) > 40 and proven.mean() > 0.95
    assert not (proven & ~same).any()
    proven, same = proofs(mask, 1.0)
    assert same.sum() > 3 and (~same).sum() > 40
    assert proven.sum() >= 0.9 * same.sum() and not (proven & ~same).any()
    proven, same = proofs(mask, 3.0)
    assert (~same).sum() > 20 and not (proven & ~same).any()
