"""A rerun's plan over a large listing: the listing as sorted columns, and no model loaded."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import RunConfig
from pipeline.labeling import listing, models
from pipeline.labeling.annotate import annotate, plan_run, run_lease
from pipeline.storage import ObjectInfo
from tests.helpers import make_images


def _item(key: str) -> ObjectInfo:
    return ObjectInfo(f"/src/{key}", key, len(key), f"etag-{key}")


def test_the_listing_is_the_images_in_key_order_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listing, "_CHUNK", 3)  # several chunks of columns
    images = [_item(f"{folder}/{n:03d}.jpg") for folder in ("b", "a", "c/d") for n in range(5)]
    others = [_item("notes.txt"), _item("a/readme.md")]
    run = [_item("run/masks/x.png")]
    shuffled = images + others + run
    random.Random(0).shuffle(shuffled)

    found = listing.image_listing(shuffled, lambda item: item.key.startswith("run/"))

    assert found.skipped == len(others)
    assert found.items() == sorted(images, key=lambda i: i.key)
    wanted = np.arange(len(found)) % 4 == 0
    assert found.items(wanted) == sorted(images, key=lambda i: i.key)[::4]


def test_an_empty_listing_has_no_items() -> None:
    found = listing.image_listing([_item("a.txt")], lambda item: False)
    assert (len(found), found.skipped, found.items()) == (0, 1, [])


def test_a_rerun_plans_new_images_without_loading_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model's identity is known from the first run; loading it (torch, an engine: most of
    a plan's memory) is left to the shards."""
    source, out = tmp_path / "in", tmp_path / "out"
    make_images(source, 3)
    config = RunConfig(source=str(source), out=str(out), device="cpu", cache_dir=tmp_path)
    annotate(config)
    make_images(tmp_path / "more", 4, seed=41)
    shutil.copy(tmp_path / "more" / "img-03.png", source / "img-03.png")

    def refuse(config: RunConfig) -> None:
        raise AssertionError("the plan loaded the model")

    monkeypatch.setattr(models, "load_predictor", refuse)
    with run_lease(config) as lease:
        plan = plan_run(config, lease.token)
    assert [i.key for s in plan.shards for i in s.items] == ["img-03.png"]
    assert (plan.images, plan.done) == (4, 3)
