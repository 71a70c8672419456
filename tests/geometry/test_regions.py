"""Regions against references built the slow way: full-image masks and pycocotools."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as mask_utils
from pydantic import ValidationError

from pipeline.geometry.policy import RegionPolicy
from pipeline.geometry.regions import image_regions
from pipeline.run.records import Region
from tests.helpers import iou, rasterize


def regions_from_class_map(
    class_map: np.ndarray, confidence: np.ndarray, **kwargs: Any
) -> list[Region]:
    return image_regions(class_map, confidence, **kwargs).regions


POLICY = RegionPolicy()


def random_blobs(
    rng: np.random.Generator, *, shape: tuple[int, int], num_classes: int
) -> np.ndarray:
    """Argmax of smooth random logits, pierced by pinholes of other classes."""
    logits = cv2.GaussianBlur(rng.random((*shape, num_classes)), (0, 0), 3)
    class_map: np.ndarray = logits.argmax(axis=2).astype(np.uint8)
    pinholes = rng.random(shape) < 0.01
    class_map[pinholes] = rng.integers(0, num_classes, int(pinholes.sum()), dtype=np.uint8)
    return class_map


def reference_components(class_map: np.ndarray, policy: RegionPolicy) -> list[tuple[int, Any]]:
    """(class, full component mask) in the promised order: class, then first raster pixel."""
    found = []
    for class_id in np.unique(class_map).tolist():
        if class_id == policy.background:
            continue
        mask = (class_map == class_id).astype(np.uint8)
        count, labels = cv2.connectedComponents(mask, connectivity=8)
        for label in range(1, count):
            component = labels == label
            if component.sum() >= policy.min_area:
                found.append((class_id, int(np.argmax(component.ravel())), component))
    found.sort(key=lambda item: item[:2])
    return [(class_id, component) for class_id, _, component in found]


def coco_rle(mask: np.ndarray) -> dict[str, Any]:
    rle: dict[str, Any] = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return rle


def regions(
    class_map: np.ndarray, confidence: np.ndarray | None = None, **policy: Any
) -> list[Region]:
    if confidence is None:
        confidence = np.full(class_map.shape, 255, np.uint8)
    return regions_from_class_map(
        class_map, confidence, image_id="img", policy=RegionPolicy(**policy)
    )


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    "shape",
    [
        (97, 131),  # odd and not square: a transposed mask fails
        (131, 97),  # the same, taller than wide
        (64, 64),  # square
    ],
)
def test_regions_match_full_mask_references(seed: int, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(seed)
    class_map = random_blobs(rng, shape=shape, num_classes=5)
    confidence = rng.integers(0, 256, shape, dtype=np.uint8)
    found = regions_from_class_map(class_map, confidence, image_id="a", policy=POLICY)
    expected = reference_components(class_map, POLICY)
    assert [(r.class_id, r.rle) for r in found] == [
        (class_id, coco_rle(mask)["counts"].decode("ascii")) for class_id, mask in expected
    ]
    assert any(len(r.polygons[0]) > 1 for r in found)  # some regions have holes
    for region, (_, mask) in zip(found, expected, strict=True):
        rle = {"size": list(shape), "counts": region.rle.encode("ascii")}
        assert region.image_id == "a"
        assert region.area == int(mask_utils.area(rle)) == int(mask.sum())
        assert list(region.bbox) == mask_utils.toBbox(rle).tolist()
        assert region.score == pytest.approx(confidence[mask].mean() / 255)
        assert len(region.polygons) == 1  # one component, one exterior
        assert iou(rasterize(region.polygons, *shape), mask) >= 0.98


@settings(max_examples=300, deadline=None)
@given(
    arrays(
        np.uint8,
        st.tuples(st.integers(1, 20), st.integers(1, 20)),
        elements=st.integers(0, 3),
    )
)
def test_every_component_of_speckled_maps_is_found(class_map: np.ndarray) -> None:
    """Speckle nests islands in holes in islands: each must be one region, exactly."""
    policy = RegionPolicy(min_area=1, background=None)
    found = regions_from_class_map(class_map, np.zeros_like(class_map), image_id="a", policy=policy)
    expected = reference_components(class_map, policy)
    assert [(r.class_id, r.rle) for r in found] == [
        (class_id, coco_rle(mask)["counts"].decode("ascii")) for class_id, mask in expected
    ]
    assert sum(r.area for r in found) == class_map.size


@pytest.mark.parametrize(
    ("size", "at"),
    [
        (50, (7, 11)),  # 2500 px, not the 2401 of centre-line contours
        (5, (0, 0)),  # 25 px in the corner
        (5, (92, 126)),  # 25 px in the opposite corner of the odd-sized image
    ],
)
def test_square_comes_back_exactly(size: int, at: tuple[int, int]) -> None:
    class_map = np.zeros((97, 131), np.uint8)
    y, x = at
    class_map[y : y + size, x : x + size] = 3
    (region,) = regions(class_map)
    assert (region.class_id, region.area, region.bbox) == (3, size * size, (x, y, size, size))
    ((ring,),) = region.polygons
    assert len(ring) == 8
    mask = class_map == 3
    assert iou(rasterize(region.polygons, 97, 131), mask) == 1.0


def test_hole_has_a_ring_and_island_in_it_is_its_own_region() -> None:
    class_map = np.zeros((9, 11), np.uint8)
    class_map[1:8, 1:10] = 1
    class_map[2:7, 2:9] = 0  # the hole
    class_map[4, 5] = 1  # an island of the same class in it
    ring, island = regions(class_map, min_area=1)
    assert len(ring.polygons) == 1 and len(ring.polygons[0]) == 2  # exterior and hole
    assert ring.area == 7 * 9 - 5 * 7
    assert island.area == 1 and island.bbox == (5, 4, 1, 1)
    without_island = class_map == 1
    without_island[4, 5] = False
    np.testing.assert_array_equal(rasterize(ring.polygons, 9, 11), without_island)
    assert ring.rle == coco_rle(without_island)["counts"].decode("ascii")


@pytest.mark.parametrize(
    ("shape", "pixels", "count"),
    [
        ((1, 1), [(0, 0)], 1),  # 1x1 image
        ((1, 7), [(0, 3)], 1),  # one row
        ((7, 1), [(6, 0)], 1),  # one column, last pixel
        ((3, 3), [(0, 0), (1, 1), (2, 2)], 1),  # diagonal pixels are one component (8-conn.)
        ((3, 3), [(0, 0), (0, 2), (2, 0), (2, 2)], 4),  # corners only: four components
    ],
)
def test_one_pixel_regions(
    shape: tuple[int, int], pixels: list[tuple[int, int]], count: int
) -> None:
    class_map = np.zeros(shape, np.uint8)
    for y, x in pixels:
        class_map[y, x] = 2
    found = regions(class_map, min_area=1)
    assert len(found) == count
    mask = class_map == 2
    union = np.zeros(shape, bool)
    for region in found:
        union |= rasterize(region.polygons, *shape)
    np.testing.assert_array_equal(union, mask)
    assert sum(r.area for r in found) == len(pixels)


@pytest.mark.parametrize(
    ("min_area", "areas"),
    [
        (1, [1, 4, 16]),  # everything
        (4, [4, 16]),  # the lone pixel goes
        (5, [16]),  # and the 2x2
        (16, [16]),  # the default keeps exactly 16
        (17, []),  # nothing is that big
    ],
)
def test_min_area_drops_small_components(min_area: int, areas: list[int]) -> None:
    class_map = np.zeros((13, 17), np.uint8)
    class_map[0, 0] = 1
    class_map[3:5, 3:5] = 1
    class_map[8:12, 10:14] = 1
    assert [r.area for r in regions(class_map, min_area=min_area)] == areas


@pytest.mark.parametrize(
    ("background", "classes"),
    [
        (0, [1]),  # the default: class 0 yields nothing
        (1, [0]),  # any class can be the background
        (None, [0, 1]),  # no background: every class yields regions
        (7, [0, 1]),  # a background class that is absent changes nothing
    ],
)
def test_background_yields_no_regions(background: int | None, classes: list[int]) -> None:
    class_map = np.zeros((20, 20), np.uint8)
    class_map[5:15, 5:15] = 1
    found = regions(class_map, background=background)
    assert sorted({r.class_id for r in found}) == classes


def test_all_background_gives_nothing() -> None:
    assert regions(np.zeros((31, 17), np.uint8)) == []


def test_whole_image_region_runs_across_columns() -> None:
    class_map = np.full((31, 17), 4, np.uint8)
    (region,) = regions(class_map)
    assert region.rle == coco_rle(class_map == 4)["counts"].decode("ascii")
    assert (region.area, region.bbox) == (31 * 17, (0, 0, 17, 31))


def test_order_is_class_then_first_pixel() -> None:
    class_map = np.zeros((20, 20), np.uint8)
    class_map[10:14, 0:4] = 2  # class 2, lower
    class_map[0:4, 12:16] = 2  # class 2, upper: comes first
    class_map[15:19, 15:19] = 1  # class 1: before all of class 2
    class_map[9:13, 8:12] = 2  # class 2, box starts higher but first pixel is row 9
    found = regions(class_map)
    assert [(r.class_id, r.bbox[1], r.bbox[0]) for r in found] == [
        (1, 15, 15),
        (2, 0, 12),
        (2, 9, 8),
        (2, 10, 0),
    ]


def test_score_is_mean_confidence_over_the_pixels() -> None:
    class_map = np.zeros((8, 8), np.uint8)
    class_map[2:6, 2:6] = 1
    confidence = np.zeros((8, 8), np.uint8)
    confidence[2:6, 2:6] = np.arange(16, dtype=np.uint8).reshape(4, 4) * 17
    (region,) = regions(class_map, confidence)
    assert region.score == pytest.approx(7.5 * 17 / 255)


def reference_sums(region: Region, confidence: np.ndarray, low_confidence: float) -> tuple:
    """Score and low-confidence share from the region's own RLE, decoded whole."""
    height, width = confidence.shape
    rle = {"size": [height, width], "counts": region.rle.encode("ascii")}
    values = confidence[mask_utils.decode(rle).astype(bool)].astype(np.int64)
    below = int(np.count_nonzero(values < round(low_confidence * 255)))
    return int(values.sum()) / len(values) / 255, below / len(values)


@pytest.mark.parametrize("low_confidence", [0.0, 0.3, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("fill_holes_below", [0, 40])
def test_scores_and_low_confidence_shares_are_numpys(
    low_confidence: float, fill_holes_below: int
) -> None:
    """Filled holes make regions overlap others (their islands), and regions touching the
    top and bottom run across columns: each region's figures are still its own pixels'."""
    rng = np.random.default_rng(7)
    class_map = random_blobs(rng, shape=(61, 83), num_classes=4)
    class_map[:, 40:43] = 3  # a band from top to bottom
    confidence = rng.integers(0, 256, class_map.shape, dtype=np.uint8)
    found = image_regions(
        class_map,
        confidence,
        image_id="a",
        policy=RegionPolicy(min_area=1, fill_holes_below=fill_holes_below),
        low_confidence=low_confidence,
    ).regions
    assert len(found) > 10
    for region in found:
        expected = reference_sums(region, confidence, low_confidence)
        assert (region.score, region.low_confidence_share) == expected


def test_figures_of_a_region_past_int32_sums_are_exact() -> None:
    """A run down the columns whose confidence sums past 2**31 is summed in float64,
    exactly."""
    class_map = np.ones((2900, 3000), np.uint8)  # one run from the top left ...
    class_map[2800:, 2990:] = 2  # ... to here
    rng = np.random.default_rng(3)
    confidence = rng.integers(250, 256, class_map.shape, dtype=np.uint8)
    confidence[:20] = rng.integers(0, 128, (20, 3000), dtype=np.uint8)
    found = regions(class_map, confidence)
    assert [r.class_id for r in found] == [1, 2]
    assert found[0].score * (2990 * 2900 + 2800) * 255 > 2**31
    for region in found:
        assert (region.score, region.low_confidence_share) == reference_sums(
            region, confidence, 0.5
        )


@pytest.mark.parametrize(
    ("class_map", "confidence", "message"),
    [
        (np.zeros((4, 4), np.int32), np.zeros((4, 4), np.uint8), "class_map must be 2-D uint8"),
        (np.zeros((4, 4, 1), np.uint8), np.zeros((4, 4, 1), np.uint8), "class_map must be 2-D"),
        (np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8), "confidence must be uint8"),
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.float32), "confidence must be uint8"),
    ],
)
def test_bad_inputs_are_refused(
    class_map: np.ndarray, confidence: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        regions_from_class_map(class_map, confidence, image_id="a", policy=POLICY)


@pytest.mark.parametrize(
    "fields",
    [
        {"min_aera": 4},  # a typo fails by name
        {"min_area": 0},  # at least one pixel
        {"simplify_tolerance": -0.1},  # a distance
    ],
)
def test_policy_refuses_bad_fields(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RegionPolicy(**fields)


def test_policy_is_frozen() -> None:
    with pytest.raises(ValidationError):
        POLICY.min_area = 3  # type: ignore[misc]


@settings(max_examples=200, deadline=None)
@given(
    arrays(
        np.uint8,
        st.tuples(st.integers(4, 40), st.integers(4, 40)),
        elements=st.integers(0, 2),
    ),
    st.sampled_from(["components", "semantic"]),
    st.sampled_from([0.5, 1.5]),
)
def test_polygons_are_faithful_and_area_bbox_are_pycocotools(
    class_map: np.ndarray, instances: str, tolerance: float
) -> None:
    """Random maps have holes and several parts; at 0.5 px every region's polygons
    re-rasterize to IoU >= 0.98, or the gate sends the region to RLE. At 1.5 px polygons
    lose pixels, and the recorded fidelity is still the drawn polygons' IoU."""
    height, width = class_map.shape
    found = regions(class_map, min_area=1, instances=instances, simplify_tolerance=tolerance)
    for region in found:
        mask = np.asarray(
            mask_utils.decode({"size": [height, width], "counts": region.rle.encode()}), bool
        )
        fidelity = iou(rasterize(region.polygons, height, width), mask)
        assert region.fidelity == pytest.approx(fidelity)
        assert region.geometry == ("polygon" if fidelity >= 0.9 else "rle")
        if region.geometry == "polygon" and tolerance == 0.5:
            assert fidelity >= 0.98
        holes = cv2.connectedComponents((~mask).astype(np.uint8), connectivity=4)[1]
        enclosed = (
            set(np.unique(holes).tolist())
            - set(
                np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]])).tolist()
            )
            - {0}
        )
        assert sum(len(p) - 1 for p in region.polygons) == len(enclosed)  # one ring per hole
        assert region.vertices == sum(len(r) // 2 for p in region.polygons for r in p)


def test_semantic_makes_one_region_per_class_with_every_part() -> None:
    class_map = np.zeros((20, 30), np.uint8)
    class_map[1:5, 1:5] = 1
    class_map[10:18, 20:28] = 1
    class_map[12:14, 22:24] = 0  # a hole in the second part
    class_map[1:3, 25:29] = 2
    class_map[19, 0] = 1  # speckle under min_area: dropped in both modes
    one, two = regions(class_map, min_area=4, instances="semantic")
    assert (one.class_id, two.class_id) == (1, 2)
    assert [len(p) for p in one.polygons] == [1, 2]  # two parts, the second with its hole
    expected = class_map == 1
    expected[19, 0] = False
    assert one.rle == coco_rle(expected)["counts"].decode("ascii")
    assert one.bbox == (1, 1, 27, 17)
    assert len(regions(class_map, min_area=4, instances="components")) == 3


@pytest.mark.parametrize(("below", "filled"), [(0, []), (5, [4]), (10, [4, 9]), (9, [4])])
def test_holes_under_the_area_are_filled(below: int, filled: list[int]) -> None:
    class_map = np.zeros((12, 20), np.uint8)
    class_map[0:12, 0:20] = 1
    class_map[2:4, 2:4] = 3  # a 4 px hole
    class_map[6:9, 10:13] = 0  # a 9 px hole
    found = [r for r in regions(class_map, fill_holes_below=below, background=3) if r.class_id == 1]
    assert found[0].area == 12 * 20 - 13 + sum(filled)
    assert len(found[0].polygons[0]) == 1 + 2 - len(filled)


@pytest.mark.parametrize("instances", ["components", "semantic"])
def test_a_filled_hole_stays_whole_around_an_island_in_it(instances: str) -> None:
    """The island is part of the semantic region and its own region among components;
    either way the filled ring covers the whole hole, island included, exactly once."""
    class_map = np.zeros((9, 11), np.uint8)
    class_map[1:8, 1:10] = 1
    class_map[2:7, 2:9] = 0  # a 35 px hole
    class_map[4, 5] = 1  # an island in it
    found = regions(class_map, min_area=1, fill_holes_below=36, instances=instances)
    filled = np.zeros_like(class_map, bool)
    filled[1:8, 1:10] = True
    assert found[0].area == 63 and found[0].bbox == (1, 1, 9, 7)
    assert found[0].rle == coco_rle(filled)["counts"].decode("ascii")
    np.testing.assert_array_equal(rasterize(found[0].polygons, 9, 11), filled)
    assert [r.area for r in found[1:]] == ([1] if instances == "components" else [])


def test_fidelity_gate_sends_unfaithful_polygons_to_rle() -> None:
    class_map = np.zeros((40, 40), np.uint8)
    rng = np.random.default_rng(3)
    class_map[5:35, 5:35] = rng.random((30, 30)) < 0.9  # ragged: simplification costs IoU
    class_map[5:35, 5:35] |= np.eye(30, dtype=bool)
    loose = regions(class_map, min_area=1, simplify_tolerance=3.0, min_fidelity=0.99)
    exact = regions(class_map, min_area=1, simplify_tolerance=0.0, min_fidelity=0.99)
    assert any(r.geometry == "rle" for r in loose)
    assert all(r.geometry == "polygon" and r.fidelity == 1.0 for r in exact)


def test_vertex_budget_moves_the_heaviest_regions_to_rle() -> None:
    class_map = np.zeros((30, 60), np.uint8)
    class_map[2:10, 2:10] = 1  # 4 vertices
    class_map[15:25, 5:55:2] = 2  # a comb: many vertices
    class_map[15:17, 5:55] = 2
    found = regions(class_map, max_vertices=20)
    assert [(r.class_id, r.geometry) for r in found] == [(1, "polygon"), (2, "rle")]
    assert all(r.geometry == "polygon" for r in regions(class_map, max_vertices=10_000))
