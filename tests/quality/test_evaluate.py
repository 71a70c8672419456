"""Evaluation against reviewed labels: figures agree with a plain numpy reference, boundary F1
with a brute-force one, every truth layout gives the same figures, and model versions line up
side by side."""

from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from prefect.testing.utilities import prefect_test_harness
from pycocotools import mask as mask_utils
from typer.testing import CliRunner, Result

from deeplab.metrics import confusion_matrix
from pipeline.geometry.class_maps import class_colours
from pipeline.quality.evaluate import (
    Evaluation,
    EvaluationError,
    boundary_counts,
    evaluate_run,
    evaluate_runs,
    region_changes,
    stored_evaluations,
)
from pipeline.quality.truth import TruthError, open_truth
from pipeline.run.manifest import RunManifest
from pipeline.run.view import RunView
from tests.runs import CLASS_NAMES, write_run

N = len(CLASS_NAMES)
PRELABEL = [sys.executable, "-c", "from flows.cli import app; app()"]


def blocky(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Random class blocks with a speckled patch: straight and ragged boundaries both."""
    cells = rng.integers(0, N, (height // 8 + 1, width // 8 + 1), dtype=np.uint8)
    out = np.repeat(np.repeat(cells, 8, axis=0), 8, axis=1)[:height, :width].copy()
    y, x = rng.integers(0, height - 8), rng.integers(0, width - 8)
    out[y : y + 8, x : x + 8] = rng.integers(0, N, (8, 8), dtype=np.uint8)
    return out


def reviewed(rng: np.random.Generator, predicted: np.ndarray) -> np.ndarray:
    """A reviewer's fix of ``predicted``: some blocks repainted, some pixels left unlabeled."""
    out = predicted.copy()
    height, width = out.shape
    for _ in range(4):
        y, x = rng.integers(0, height - 6), rng.integers(0, width - 6)
        h, w = rng.integers(2, 12, size=2)
        out[y : y + h, x : x + w] = rng.integers(0, N)
    y, x = rng.integers(0, height - 5), rng.integers(0, width - 5)
    out[y : y + 5, x : x + 7] = 255
    out[rng.random(out.shape) < 0.02] = 255
    return out


def write_masks(
    folder: Path,
    maps: Mapping[str, np.ndarray],
    *,
    names: tuple[str, ...] | None = CLASS_NAMES,
    index: bool = True,
    rgb: bool = False,
) -> Path:
    """A truth folder in the masks layout: palette (or RGB) PNGs, labelmap.txt, index.csv."""
    colours = class_colours(256, 0)
    palette = bytes(v for colour in colours for v in colour)
    rows = []
    for n, (key, class_map) in enumerate(maps.items()):
        name = f"SegmentationClass/m{n}.png" if index else f"SegmentationClass/{key[:-4]}.png"
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if rgb:
            Image.fromarray(np.array(colours, np.uint8)[class_map]).save(path)
        else:
            image = Image.fromarray(class_map)
            image.putpalette(palette)
            image.save(path)
        rows.append((key, name))
    if names is not None:
        lines = [f"{name}:{r},{g},{b}::" for name, (r, g, b) in zip(names, colours, strict=False)]
        (folder / "labelmap.txt").write_text("# label:color_rgb:parts:actions\n" + "\n".join(lines))
    if index:
        with (folder / "index.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["key", "image_id", "mask"])
            writer.writerows((key, "x", name) for key, name in rows)
    return folder


def write_coco(path: Path, maps: Mapping[str, np.ndarray], *, order: list[int]) -> Path:
    """COCO with category ids shuffled (``order``), one RLE annotation per connected part;
    every other part in uncompressed RLE."""
    category_of = {class_id: 100 + order.index(class_id) for class_id in range(1, N)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for n, (key, class_map) in enumerate(maps.items()):
        height, width = class_map.shape
        images.append({"id": n, "file_name": key, "height": height, "width": width})
        for class_id in range(1, N):
            count, labels = cv2.connectedComponents((class_map == class_id).astype(np.uint8))
            for part in range(1, count):
                mask = np.asfortranarray((labels == part).astype(np.uint8))
                rle: dict[str, Any] = mask_utils.encode(mask)
                if len(annotations) % 2:
                    segmentation: Any = {"size": rle["size"], "counts": _runs(mask)}
                else:
                    segmentation = {"size": rle["size"], "counts": rle["counts"].decode()}
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": n,
                        "category_id": category_of[class_id],
                        "segmentation": segmentation,
                        "iscrowd": 0,
                    }
                )
    categories = [{"id": category_of[c], "name": CLASS_NAMES[c]} for c in order]
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path


def _runs(mask: np.ndarray) -> list[int]:
    flat = mask.ravel(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], edges, [flat.size]))
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def reference(truths: list[np.ndarray], preds: list[np.ndarray]) -> dict[str, Any]:
    counts = np.zeros(N * N, np.int64)
    for t, p in zip(truths, preds, strict=True):
        keep = t != 255
        counts += np.bincount(t[keep].astype(np.int64) * N + p[keep], minlength=N * N)
    cm = counts.reshape(N, N)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = [tp[c] / union[c] if union[c] else None for c in range(N)]
    present = [v for v in iou if v is not None]
    return {
        "confusion": cm,
        "iou": iou,
        "miou": sum(present) / len(present),
        "accuracy": tp.sum() / cm.sum(),
    }


@pytest.fixture
def case(tmp_path: Path) -> Iterator[tuple[RunView, dict[str, np.ndarray], dict[str, np.ndarray]]]:
    rng = np.random.default_rng(7)
    preds = {f"img-{i}.jpg": blocky(rng, 40 + 8 * i, 56) for i in range(4)}
    truths = {key: reviewed(rng, pred) for key, pred in preds.items()}
    yield write_run(tmp_path / "run", preds), preds, truths


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_figures_agree_with_a_numpy_reference(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    preds = {f"{i}.png": blocky(rng, 32 + 8 * i, 48 + 4 * seed) for i in range(5)}
    truths = {key: reviewed(rng, pred) for key, pred in preds.items()}
    view = write_run(tmp_path / "run", preds)
    [evaluation] = evaluate_runs([view], open_truth(str(write_masks(tmp_path / "t", truths))))
    ref = reference(list(truths.values()), list(preds.values()))
    assert np.array_equal(np.array(evaluation.confusion), ref["confusion"])
    for name, expected in zip(CLASS_NAMES, ref["iou"], strict=True):
        got = evaluation.iou[name]
        assert (got is None) == (expected is None)
        if expected is not None:
            assert got == pytest.approx(expected, abs=1e-6)
    assert evaluation.miou == pytest.approx(ref["miou"], abs=1e-6)
    assert evaluation.pixel_accuracy == pytest.approx(ref["accuracy"], abs=1e-6)
    assert evaluation.changed_share == pytest.approx(1 - ref["accuracy"], abs=1e-6)
    assert evaluation.pixels == sum(int((t != 255).sum()) for t in truths.values())
    outcomes = pq.read_table(tmp_path / "run" / "evaluations" / "v1.images.parquet").to_pylist()
    assert evaluation.per_image == "evaluations/v1.images.parquet"
    assert [row["key"] for row in outcomes] == sorted(preds)
    for row in outcomes:
        t, p = truths[row["key"]], preds[row["key"]]
        keep = t != 255
        assert row["outcome"] == "scored" and row["pixels"] == int(keep.sum())
        assert row["changed_share"] == pytest.approx(float((t[keep] != p[keep]).mean()), abs=1e-6)
    ranked = sorted(outcomes, key=lambda row: (-row["changed_share"], row["key"]))
    assert [s.key for s in evaluation.most_corrected] == [row["key"] for row in ranked]
    assert evaluation.regions_added == sum(row["regions_added"] for row in outcomes)
    stored = json.loads((tmp_path / "run" / "evaluations" / "v1.json").read_text())
    assert stored["miou"] == evaluation.miou
    assert (tmp_path / "run" / "evaluations" / "v1.md").read_text().count("| mIoU |") == 1


def test_every_truth_layout_gives_the_same_figures(
    tmp_path: Path, case: tuple[RunView, dict[str, np.ndarray], dict[str, np.ndarray]]
) -> None:
    view, _, truths = case
    plain = {k: np.where(t == 255, 0, t).astype(np.uint8) for k, t in truths.items()}
    layouts = {
        "index": write_masks(tmp_path / "index", plain),
        "by name": write_masks(tmp_path / "stems", plain, index=False),
        "no labelmap": write_masks(tmp_path / "bare", plain, names=None),
        "rgb": write_masks(tmp_path / "rgb", plain, rgb=True),
        "coco": write_coco(tmp_path / "coco.json", plain, order=[3, 1, 4, 2]),
    }
    figures = {
        name: evaluate_run(view, open_truth(str(source))).confusion
        for name, source in layouts.items()
    }
    expected = reference(list(plain.values()), [case[1][k] for k in plain])["confusion"]
    for name, confusion in figures.items():
        assert np.array_equal(np.array(confusion), expected), name


def test_labelmap_order_is_mapped_to_the_run_by_name(
    tmp_path: Path, case: tuple[RunView, dict[str, np.ndarray], dict[str, np.ndarray]]
) -> None:
    view, preds, truths = case
    order = [0, 3, 1, 4, 2]  # truth index i is the run's class order[i]
    inverse = np.argsort(order).astype(np.uint8)
    lut = np.arange(256, dtype=np.uint8)
    lut[:N] = inverse
    names = tuple(CLASS_NAMES[c] for c in order)
    source = write_masks(tmp_path / "t", {k: lut[t] for k, t in truths.items()}, names=names)
    evaluation = evaluate_run(view, open_truth(str(source)))
    expected = reference(list(truths.values()), list(preds.values()))["confusion"]
    assert np.array_equal(np.array(evaluation.confusion), expected)


def test_a_truth_class_the_run_lacks_is_a_clear_error(
    tmp_path: Path, case: tuple[RunView, dict[str, np.ndarray], dict[str, np.ndarray]]
) -> None:
    view, _, truths = case
    names = (*CLASS_NAMES[:4], "star")
    with pytest.raises(TruthError, match="truth class 'star' is not one of the model's"):
        evaluate_run(view, open_truth(str(write_masks(tmp_path / "t", truths, names=names))))
    coco = json.loads(write_coco(tmp_path / "c.json", truths, order=[1, 2, 3, 4]).read_text())
    coco["categories"][0]["name"] = "Disc"
    (tmp_path / "c.json").write_text(json.dumps(coco))
    with pytest.raises(TruthError, match="'Disc' is not one of the model's"):
        evaluate_run(view, open_truth(str(tmp_path / "c.json")))


def test_failed_missing_and_misfit_images_are_listed(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    preds = {k: blocky(rng, 32, 40) for k in ("a.jpg", "b.jpg", "c.jpg", "d.jpg")}
    view = write_run(tmp_path / "run", preds, failed={"bad.jpg": "not a readable image"})
    truths = {
        "a.jpg": preds["a.jpg"],
        "b.jpg": np.zeros((10, 10), np.uint8),  # not the image's size
        "bad.jpg": np.zeros((10, 10), np.uint8),
        "c.jpg": np.full((32, 40), 9, np.uint8),  # class index 9 of 5
        "gone.jpg": np.zeros((10, 10), np.uint8),
    }
    [evaluation] = evaluate_runs(
        [view], open_truth(str(write_masks(tmp_path / "t", truths, names=None)))
    )
    assert evaluation.images == 1 and evaluation.pixel_accuracy == 1.0
    reasons = {f.key: f.reason for f in evaluation.failed_shown}
    assert reasons["bad.jpg"] == "the run failed: not a readable image"
    assert reasons["b.jpg"] == "truth is 10x10, the image 40x32"
    assert "class index 9 is not one of the model's 5 classes" in reasons["c.jpg"]
    assert (evaluation.failed, evaluation.missing, evaluation.truth_unmatched) == (3, 1, 1)
    assert evaluation.missing_shown == ["d.jpg"]
    assert evaluation.truth_unmatched_shown == ["gone.jpg"]
    outcomes = pq.read_table(tmp_path / "run" / "evaluations" / "v1.images.parquet")
    assert {(r["key"], r["outcome"], r["reason"]) for r in outcomes.to_pylist()} == {
        ("a.jpg", "scored", None),
        *(("b.jpg", "failed", reasons["b.jpg"]), ("c.jpg", "failed", reasons["c.jpg"])),
        ("bad.jpg", "failed", reasons["bad.jpg"]),
        ("d.jpg", "missing", None),
        ("gone.jpg", "truth only", None),
    }
    markdown = (tmp_path / "run" / "evaluations" / "v1.md").read_text()
    assert "- bad.jpg: the run failed: not a readable image" in markdown
    assert "without truth" in markdown and "- d.jpg" in markdown
    with pytest.raises(EvaluationError, match=r"no image of .* could be scored"):
        evaluate_run(
            view, open_truth(str(write_masks(tmp_path / "u", {"zzz.jpg": truths["b.jpg"]})))
        )


def test_scoring_in_worker_processes_gives_what_scoring_here_gives(tmp_path: Path) -> None:
    """Scores come back from the workers out of step with the failures and images without
    truth found here; the outcomes must still be every image in key order, and every figure
    the same as scoring in this process."""
    rng = np.random.default_rng(9)
    preds = {f"{i:02d}.jpg": blocky(rng, 24 + 4 * (i % 3), 32) for i in range(30)}
    view = write_run(tmp_path / "run", preds, failed={"05b.jpg": "not a readable image"})
    truths = {key: reviewed(rng, pred) for key, pred in preds.items() if key[1] not in "37"}
    truths["11.jpg"] = np.zeros((3, 3), np.uint8)  # not the image's size, found by a worker
    truth = open_truth(str(write_masks(tmp_path / "t", truths)))
    figures, rows = [], []
    for workers in (0, 2):
        with (tmp_path / f"outcomes-{workers}.parquet").open("w+b") as file:
            evaluation = evaluate_run(view, truth, outcomes=file, workers=workers)
            file.seek(0)
            rows.append(pq.read_table(file).to_pylist())
        figures.append(evaluation.model_dump(exclude={"evaluated_at"}))
    assert figures[0] == figures[1]
    assert rows[0] == rows[1]
    assert [row["key"] for row in rows[0]] == sorted([*preds, "05b.jpg"])
    assert {row["outcome"] for row in rows[0]} == {"scored", "failed", "missing"}
    assert figures[0]["failed_shown"][:2] == [
        {"key": "05b.jpg", "reason": "the run failed: not a readable image"},
        {"key": "11.jpg", "reason": "truth is 3x3, the image 32x32"},
    ]


@pytest.mark.parametrize("index", [True, False])
def test_long_lists_are_counted_and_listed_in_the_outcomes_file(
    tmp_path: Path, index: bool
) -> None:
    """More failures than the JSON lists: the counts are whole, the JSON and markdown show
    the first, and the outcomes file has every one; unused truth is found by digest, for
    truth paired through index.csv and by name alike."""
    rng = np.random.default_rng(5)
    preds = {f"k{i:03d}.jpg": blocky(rng, 16, 16) for i in range(130)}
    view = write_run(tmp_path / "run", preds)
    truths = {k: preds[k] for k in list(preds)[:10]}
    truths |= {f"x{i:03d}.jpg": np.zeros((4, 4), np.uint8) for i in range(60)}
    [evaluation] = evaluate_runs(
        [view], open_truth(str(write_masks(tmp_path / "t", truths, index=index)))
    )
    assert (evaluation.images, evaluation.missing, evaluation.truth_unmatched) == (10, 120, 60)
    assert evaluation.missing_shown == [f"k{i:03d}.jpg" for i in range(10, 60)]
    unused = [f"x{i:03d}.jpg" for i in range(10)] if index else None
    shown = evaluation.truth_unmatched_shown
    assert len(shown) == 50 and (unused is None or shown[:10] == unused)
    outcomes = pq.read_table(tmp_path / "run" / "evaluations" / "v1.images.parquet").to_pylist()
    assert [r["key"] for r in outcomes if r["outcome"] == "missing"] == sorted(preds)[10:]
    assert len([r for r in outcomes if r["outcome"] == "truth only"]) == 60
    markdown = (tmp_path / "run" / "evaluations" / "v1.md").read_text()
    assert "- ... and 70 more (all in `evaluations/v1.images.parquet`)" in markdown


def test_nothing_lands_when_one_run_of_several_cannot_be_scored(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    truths = {f"{i}.jpg": blocky(rng, 16, 24) for i in range(3)}
    good = write_run(tmp_path / "good", truths)
    stranger = _other_model(write_run(tmp_path / "other", {"z.jpg": truths["0.jpg"]}), "v2")
    with pytest.raises(EvaluationError, match="could be scored"):
        evaluate_runs([good, stranger], open_truth(str(write_masks(tmp_path / "t", truths))))
    assert not (tmp_path / "good" / "evaluations").exists()


def test_an_evaluation_written_with_whole_lists_is_read_as_counts(tmp_path: Path) -> None:
    """Evaluations from before the outcomes file held every score and failure in the JSON;
    they still line up beside new ones."""
    rng = np.random.default_rng(8)
    truths = {f"{i}.jpg": blocky(rng, 16, 24) for i in range(3)}
    view = write_run(tmp_path / "run", truths)
    [new] = evaluate_runs([view], open_truth(str(write_masks(tmp_path / "t", truths))))
    old = new.model_dump(mode="json", exclude={"most_corrected", "per_image"})
    for field in ("failed", "missing", "truth_unmatched"):
        del old[f"{field}_shown"]
    scores = [
        {
            "key": f"{i}.jpg",
            "pixels": 9,
            "changed_share": i / 10,
            "boundary_f1": None,
            "regions_added": 0,
            "regions_removed": 1,
        }
        for i in range(25)
    ]
    failures = [{"key": f"f{i}", "reason": "r"} for i in range(60)]
    old |= {
        "model_version": "v0",
        "per_image": scores,
        "failed": failures,
        "missing": ["m"],
        "truth_unmatched": [],
    }
    (tmp_path / "run" / "evaluations" / "v0.json").write_text(json.dumps(old))
    read = {e.model_version: e for e in stored_evaluations(view)}
    assert set(read) == {"v0", "v1"}
    v0 = read["v0"]
    assert (v0.failed, v0.missing, v0.truth_unmatched, v0.per_image) == (60, 1, 0, None)
    assert [s.key for s in v0.most_corrected] == [f"{i}.jpg" for i in range(24, 4, -1)]
    assert len(v0.failed_shown) == 50 and v0.missing_shown == ["m"]
    assert Evaluation.model_validate_json(v0.model_dump_json()) == v0


def brute_boundaries(labels: np.ndarray, valid: np.ndarray) -> np.ndarray:
    height, width = labels.shape
    out = np.zeros(labels.shape, bool)
    for y in range(height):
        for x in range(width):
            for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                v, u = y + dy, x + dx
                if 0 <= v < height and 0 <= u < width and valid[y, x] and valid[v, u]:
                    out[y, x] |= bool(labels[y, x] != labels[v, u])
    return out


def brute_matched(points: np.ndarray, targets: np.ndarray, tolerance: float) -> int:
    p, t = np.argwhere(points), np.argwhere(targets)
    if not len(p) or not len(t):
        return 0
    distance = np.sqrt(((p[:, None, :] - t[None, :, :]) ** 2).sum(-1)).min(1)
    return int((distance <= tolerance).sum())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("tolerance", [0, 1, 2, 3, 7])
def test_boundary_counts_agree_with_brute_force(seed: int, tolerance: int) -> None:
    rng = np.random.default_rng(seed)
    predicted = blocky(rng, 24, 28)
    truth = reviewed(rng, np.roll(predicted, int(rng.integers(-2, 3)), axis=1))
    valid = truth != 255
    bt, bp = brute_boundaries(truth, valid), brute_boundaries(predicted, valid)
    expected = [
        brute_matched(bp, bt, tolerance),
        int(bp.sum()),
        brute_matched(bt, bp, tolerance),
        int(bt.sum()),
    ]
    assert boundary_counts(truth, predicted, tolerance).tolist() == expected


def _f1(truth: np.ndarray, predicted: np.ndarray, tolerance: int) -> float:
    mp, p, mt, t = boundary_counts(truth, predicted, tolerance).tolist()
    precision, recall = mp / p, mt / t
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


@pytest.mark.parametrize("tolerance", [0, 1, 2])
def test_boundary_f1_is_one_on_identical_maps_and_falls_as_boundaries_shift(
    tolerance: int,
) -> None:
    truth = np.zeros((96, 96), np.uint8)
    cv2.circle(truth, (40, 48), 22, 1, -1)
    cv2.rectangle(truth, (62, 20), (84, 70), 2, -1)
    shifted = [_f1(truth, np.roll(truth, s, axis=1), tolerance) for s in range(8)]
    print(f"tolerance {tolerance} px: boundary F1 by shift 0..7 px", np.round(shifted, 3))
    assert shifted[: tolerance + 1] == [1.0] * (tolerance + 1)  # identical, or within tolerance
    assert all(a >= b for a, b in itertools.pairwise(shifted)), shifted
    assert shifted[3] < shifted[1] and shifted[7] < shifted[tolerance + 1] < 1.0
    rng = np.random.default_rng(0)
    noisy = blocky(rng, 40, 40)
    assert _f1(noisy, noisy.copy(), tolerance) == 1.0


def test_regions_added_and_removed() -> None:
    truth = np.zeros((40, 60), np.uint8)
    truth[2:10, 2:10] = 1  # also predicted, though shifted: matched
    truth[20:30, 5:15] = 2  # missed by the model: added
    truth[30:38, 40:58] = 255  # unlabeled
    predicted = np.zeros_like(truth)
    predicted[4:12, 4:12] = 1
    predicted[20:30, 5:15] = 3  # wrong class: the reviewer removed it
    predicted[32:36, 44:50] = 4  # only over unlabeled truth: neither
    predicted[0:2, 30:40] = 0  # background is never a region
    assert region_changes(truth, predicted, 0) == (1, 1)
    truth[0:2, 30:40] = 1  # left as background by the model: added
    assert region_changes(truth, predicted, 0) == (2, 1)
    truth[10:20, 20:30] = predicted[10:20, 20:30] = 2
    predicted[14:16, 24:26] = 0  # a hole the reviewer filled
    assert region_changes(truth, predicted, 0) == (2, 1)
    # With no background class, background parts are regions too: the hole was removed.
    assert region_changes(truth, predicted, None) == (2, 2)


def brute_parts(mask: np.ndarray) -> list[set[tuple[int, int]]]:
    """8-connected parts of a mask, by flood fill."""
    seen: set[tuple[int, int]] = set()
    parts = []
    for start in zip(*np.nonzero(mask), strict=True):
        if start in seen:
            continue
        part, stack = set(), [start]
        seen.add(start)
        while stack:
            y, x = stack.pop()
            part.add((y, x))
            for dy, dx in itertools.product((-1, 0, 1), repeat=2):
                q = (y + dy, x + dx)
                inside = 0 <= q[0] < mask.shape[0] and 0 <= q[1] < mask.shape[1]
                if inside and q not in seen and mask[q]:
                    seen.add(q)
                    stack.append(q)
        parts.append(part)
    return parts


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("background", [0, None])
def test_regions_added_and_removed_agree_with_flood_fill(seed: int, background: int | None) -> None:
    rng = np.random.default_rng(seed)
    predicted = blocky(rng, 26, 34)
    truth = reviewed(rng, predicted)
    truth[rng.random(truth.shape) < 0.03] = int(rng.integers(0, N))  # speckle: tiny parts
    valid = truth != 255
    added = removed = 0
    for class_id in sorted(set(np.unique(truth[valid])) | set(np.unique(predicted[valid]))):
        if class_id == background:
            continue
        in_truth, in_pred = truth == class_id, (predicted == class_id) & valid
        added += sum(not any(in_pred[q] for q in part) for part in brute_parts(in_truth))
        removed += sum(not any(in_truth[q] for q in part) for part in brute_parts(in_pred))
    assert region_changes(truth, predicted, background) == (added, removed)
    cm = confusion_matrix(truth, predicted, N)
    assert region_changes(truth, predicted, background, confusion=cm) == (added, removed)


def _other_model(view: RunView, version: str) -> RunView:
    path = Path(view.layout.manifest)
    manifest = RunManifest.model_validate_json(path.read_text())
    model = manifest.model.model_copy(update={"model_version": version, "ref": f"{version}.ckpt"})
    path.write_text(manifest.model_copy(update={"model": model}).model_dump_json())
    from pipeline.formats import open_run

    return open_run(view.layout.root)


def test_model_versions_side_by_side(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    truths = {f"{i}.jpg": blocky(rng, 32, 40) for i in range(3)}
    good = write_run(tmp_path / "good", {k: t.copy() for k, t in truths.items()})
    worse = _other_model(
        write_run(tmp_path / "worse", {k: reviewed(rng, t) % N for k, t in truths.items()}), "v2"
    )
    source = str(write_masks(tmp_path / "t", truths))
    first, second = evaluate_runs([good, worse], open_truth(source))
    assert first.miou == 1.0 and second.miou is not None and second.miou < 1.0
    for run in ("good", "worse"):
        own = "v1" if run == "good" else "v2"
        assert sorted(p.name for p in (tmp_path / run / "evaluations").iterdir()) == sorted(
            ["v1.json", "v2.json", f"{own}.md", f"{own}.images.parquet"]
        )
    markdown = (tmp_path / "good" / "evaluations" / "v1.md").read_text()
    assert "| | test v1 | v2.ckpt v2 |" in markdown  # named by checkpoint file and version
    assert f"| mIoU | 100.00% | {100 * second.miou:.2f}% |" in markdown
    # Against other truth, an evaluation is listed, not put in a column.
    other = write_masks(tmp_path / "t2", {"0.jpg": truths["0.jpg"]})
    evaluate_runs([worse], open_truth(str(other)))
    markdown = (tmp_path / "worse" / "evaluations" / "v2.md").read_text()
    assert "| | v2.ckpt v2 |" in markdown
    assert "Not compared (evaluated against other truth):" in markdown
    assert "- test v1: " in markdown
    with pytest.raises(EvaluationError, match="different models"):
        evaluate_runs([good, good], open_truth(source))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [*PRELABEL, *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


def _cli_here(*args: str) -> Result:
    """The command in this process: the refusals need no process of their own."""
    from flows.cli import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_cli_writes_the_evaluation_and_refuses_bad_input_in_one_line(
    tmp_path: Path, case: tuple[RunView, dict[str, np.ndarray], dict[str, np.ndarray]]
) -> None:
    view, _, truths = case
    run = view.layout.root
    source = write_masks(tmp_path / "t", truths)
    done = _cli("evaluate", run, "--truth", str(source), "--boundary-tolerance", "1")
    assert done.returncode == 0, done.stderr
    assert "mIoU" in done.stderr and "Traceback" not in done.stderr
    stored = json.loads((Path(run) / "evaluations" / "v1.json").read_text())
    assert stored["boundary_tolerance"] == 1
    for args, reason in [
        ((run, "--truth", str(tmp_path / "nowhere")), "nowhere: not a folder"),
        ((str(tmp_path / "norun"), "--truth", str(source)), "not a finished run folder"),
        ((run, "--truth", str(tmp_path / "no.json")), "no.json: cannot read the COCO file"),
        ((run, "--truth", str(source), "--boundary-tolerance", "-1"), "tolerance must be >= 0"),
    ]:
        result = _cli_here("evaluate", *args)
        assert result.exit_code == 2, result.stderr
        assert reason in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.slow
def test_flow_writes_the_same_evaluation_and_an_artifact(
    tmp_path: Path, case: tuple[RunView, dict[str, np.ndarray], dict[str, np.ndarray]]
) -> None:
    from flows.evaluate import evaluate_flow

    view, _, truths = case
    source = str(write_masks(tmp_path / "t", truths))
    plain = evaluate_run(view, open_truth(source))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with prefect_test_harness(server_startup_timeout=90):
        flowed = evaluate_flow(view.layout.root, source)
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts()
    assert flowed[0].confusion == plain.confusion
    assert any(a.key == "evaluation-v1" and "mIoU" in str(a.data) for a in artifacts)
