"""RLEs from crops, compressed many at once, against pycocotools' encoder on the full mask."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as mask_utils

from pipeline.geometry.rle import compressed, run_lengths_from_crop

# pycocotools' decode predates NumPy 2's __array__(copy=...) and warns on every call.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def placed(crop: np.ndarray, *, x0: int, y0: int, height: int, width: int) -> np.ndarray:
    full = np.zeros((height, width), np.uint8)
    full[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
    return full


def encoded(full: np.ndarray) -> dict[str, Any]:
    """The reference: pycocotools on the whole mask, column-major as it requires."""
    rle: dict[str, Any] = mask_utils.encode(np.asfortranarray(full.astype(np.uint8)))
    return rle


def rle_from_crop(crop: np.ndarray, *, x0: int, y0: int, height: int, width: int) -> str:
    runs = run_lengths_from_crop(crop, x0=x0, y0=y0, height=height, width=width)
    (counts,) = compressed(runs, np.array([0]))
    return counts


ONES_2X3 = np.ones((2, 3), bool)


@pytest.mark.parametrize(
    ("crop", "x0", "y0", "height", "width"),
    [
        (np.ones((1, 1), bool), 0, 0, 7, 5),  # first pixel: the leading zero run is empty
        (np.ones((1, 1), bool), 4, 6, 7, 5),  # last pixel: no trailing zero run
        (np.ones((7, 5), bool), 0, 0, 7, 5),  # whole image: counts are [0, h*w]
        (np.zeros((3, 2), bool), 1, 2, 7, 5),  # empty crop: one run of zeros
        (ONES_2X3, 1, 5, 7, 5),  # touches the bottom; runs in one column stay apart
        (np.ones((7, 2), bool), 2, 0, 7, 5),  # full height: columns join into one run
        (np.array([[1], [0], [1]], bool), 3, 0, 3, 4),  # full height, a gap in the column
        (np.array([[0, 1], [1, 1], [1, 0]], bool), 1, 0, 3, 3),  # full height, bottom-top join
        (np.eye(4, 6, dtype=bool), 3, 2, 97, 131),  # odd size: a transposed crop fails here
    ],
)
def test_rle_from_crop_matches_pycocotools_encode(
    crop: np.ndarray, x0: int, y0: int, height: int, width: int
) -> None:
    full = placed(crop, x0=x0, y0=y0, height=height, width=width)
    counts = rle_from_crop(crop, x0=x0, y0=y0, height=height, width=width)
    assert counts == encoded(full)["counts"].decode("ascii")


@st.composite
def crops_on_images(draw: st.DrawFn) -> tuple[np.ndarray, int, int, int, int]:
    height = draw(st.integers(1, 40))
    width = draw(st.integers(1, 40))
    y0 = draw(st.integers(0, height - 1))
    x0 = draw(st.integers(0, width - 1))
    crop_height = draw(st.integers(1, height - y0))
    crop_width = draw(st.integers(1, width - x0))
    crop = draw(arrays(np.bool_, (crop_height, crop_width)))
    return crop, x0, y0, height, width


@settings(max_examples=400, deadline=None)
@given(crops_on_images())
def test_rle_from_a_crop_is_pycocotools_encoding_of_the_placed_mask(
    case: tuple[np.ndarray, int, int, int, int],
) -> None:
    crop, x0, y0, height, width = case
    full = placed(crop, x0=x0, y0=y0, height=height, width=width)
    counts = rle_from_crop(crop, x0=x0, y0=y0, height=height, width=width)
    assert counts == encoded(full)["counts"].decode("ascii")


@settings(max_examples=200, deadline=None)
@given(crops_on_images())
def test_run_lengths_decode_to_the_placed_crop(case: tuple[np.ndarray, int, int, int, int]) -> None:
    crop, x0, y0, height, width = case
    runs = run_lengths_from_crop(crop, x0=x0, y0=y0, height=height, width=width)
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": runs.tolist()}, height, width)
    expected = placed(crop, x0=x0, y0=y0, height=height, width=width)
    np.testing.assert_array_equal(mask_utils.decode(rle), expected)
    assert int(runs.sum()) == height * width
    assert (runs[1:] > 0).all()  # only the leading zero run may be empty, as COCO writes it


@pytest.mark.parametrize(
    ("x0", "y0", "shape"),
    [
        (-1, 0, (2, 2)),  # left of the image
        (0, -1, (2, 2)),  # above the image
        (4, 0, (2, 2)),  # sticks out on the right of a 5-wide image
        (0, 6, (2, 2)),  # sticks out at the bottom of a 7-high image
    ],
)
def test_crop_outside_the_image_is_refused(x0: int, y0: int, shape: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="outside the 5x7 image"):
        run_lengths_from_crop(np.ones(shape, bool), x0=x0, y0=y0, height=7, width=5)


def test_many_rles_compress_at_once_as_pycocotools_writes_each() -> None:
    """Large images give runs of several 5-bit groups and differences of both signs."""
    rng = np.random.default_rng(0)
    masks = []
    for height, width in [(1, 1), (3, 2), (480, 640), (2000, 3000), (97, 131)]:
        mask = np.zeros((height, width), np.uint8)
        mask[rng.integers(0, height) :, rng.integers(0, width) :] = 1
        mask &= rng.random((height, width)) < rng.uniform(0.5, 1)
        masks.append(mask)
    masks.append(np.ones((5, 7), np.uint8))
    runs = [
        run_lengths_from_crop(m.astype(bool), x0=0, y0=0, height=m.shape[0], width=m.shape[1])
        for m in masks
    ]
    heads = np.cumsum([0] + [len(r) for r in runs[:-1]])
    assert compressed(np.concatenate(runs), heads) == [
        encoded(m)["counts"].decode("ascii") for m in masks
    ]
