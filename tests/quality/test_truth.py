"""Reviewed labels read as truth: masks by name or colour, COCO painted in order, and every
way a truth can be wrong refused with the file and the reason."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from deeplab.metrics import IGNORE_INDEX
from pipeline.quality import truth_listing
from pipeline.quality.truth import TruthError, check_names, open_truth
from tests.helpers import record_reads

MODEL = ("background", "disc", "box", "ring")


def _palette_mask(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(values.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0] * 256)
    image.save(path)


def test_mask_indices_are_mapped_to_the_model_by_labelmap_name(tmp_path: Path) -> None:
    # The truth orders its classes differently and leaves some pixels unlabeled.
    (tmp_path / "labelmap.txt").write_text(
        "# label:color_rgb:parts:actions\nbackground:0,0,0::\nring:1,1,1::\ndisc:2,2,2::\n"
    )
    values = np.array([[0, 1, 2], [IGNORE_INDEX, 2, 1]])
    _palette_mask(tmp_path / "SegmentationClass" / "sub" / "a.png", values)
    truth = open_truth(str(tmp_path))
    assert truth.names == ("background", "ring", "disc")
    assert truth.has("sub/a.jpg") and not truth.has("a.jpg")
    read = truth.read("sub/a.jpg", MODEL, 0)
    assert read.tolist() == [[0, 3, 1], [IGNORE_INDEX, 1, 3]]
    assert list(truth.unmatched(["sub/a.jpg"])) == []
    assert list(truth.unmatched(["other.jpg"])) == ["SegmentationClass/sub/a.png"]


def test_rgb_masks_are_read_by_labelmap_colour(tmp_path: Path) -> None:
    (tmp_path / "labelmap.txt").write_text("background:0,0,0::\nbox:250,50,83::\n")
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 1] = (250, 50, 83)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    assert open_truth(str(tmp_path)).read("a.png", MODEL, 0).tolist() == [[0, 2], [0, 0]]
    rgb[1, 1] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    with pytest.raises(TruthError, match=r"colour \(1, 2, 3\) is not in labelmap.txt"):
        open_truth(str(tmp_path)).read("a.png", MODEL, 0)


def test_a_truth_class_the_model_lacks_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "labelmap.txt").write_text("background:0,0,0::\ncat:9,9,9::\n")
    _palette_mask(tmp_path / "a.png", np.zeros((2, 2)))
    with pytest.raises(TruthError, match="truth class 'cat' is not one of the model's classes"):
        check_names(open_truth(str(tmp_path)), MODEL)


def test_index_csv_pairs_keys_and_masks_and_may_not_leave_the_folder(tmp_path: Path) -> None:
    _palette_mask(tmp_path / "m" / "x.png", np.ones((2, 2)))
    (tmp_path / "index.csv").write_text("key,mask\nphotos/IMG 1.jpg,m/x.png\n")
    assert open_truth(str(tmp_path)).read("photos/IMG 1.jpg", MODEL, 0).tolist() == [[1, 1]] * 2
    (tmp_path / "index.csv").write_text("key,mask\na.jpg,../outside.png\n")
    with pytest.raises(TruthError, match="leaves the folder"):
        open_truth(str(tmp_path))


def test_no_masks_or_a_broken_mask_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TruthError, match="no PNG masks found"):
        open_truth(str(tmp_path))
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(TruthError, match=r"a.jpg: mask a.png is not a readable PNG"):
        open_truth(str(tmp_path)).read("a.jpg", MODEL, 0)


def test_coco_annotations_paint_in_file_order_as_pycocotools_draws_them(tmp_path: Path) -> None:
    height, width = 20, 30
    square = [[2, 2, 12, 2, 12, 12, 2, 12]]
    bar = mask_utils.encode(np.asfortranarray(np.pad(np.ones((4, 30), np.uint8), ((8, 8), (0, 0)))))
    bar["counts"] = bar["counts"].decode()
    coco = {
        "images": [{"id": 7, "file_name": "a.jpg", "height": height, "width": width}],
        "categories": [{"id": 1, "name": "disc"}, {"id": 5, "name": "ring"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "segmentation": square},
            {"id": 2, "image_id": 7, "category_id": 5, "segmentation": bar},  # over the disc
        ],
    }
    path = tmp_path / "truth.json"
    path.write_text(json.dumps(coco))
    truth = open_truth(str(path))
    expected = np.zeros((height, width), np.uint8)
    expected[mask_utils.decode(mask_utils.frPyObjects(square, height, width))[..., 0] > 0] = 1
    expected[mask_utils.decode(bar) > 0] = 3
    assert np.array_equal(truth.read("a.jpg", MODEL, 0), expected)
    assert list(truth.unmatched(["b.jpg"])) == ["a.jpg"]
    coco["annotations"][1]["category_id"] = 99
    path.write_text(json.dumps(coco))
    with pytest.raises(TruthError, match="annotation 2 has an unknown category"):
        open_truth(str(path)).read("a.jpg", MODEL, 0)
    path.write_text("{not json")
    with pytest.raises(TruthError, match="not a COCO instances file"):
        open_truth(str(path))


def test_masks_are_read_as_scored_and_the_digest_covers_every_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a masks folder reads no mask; the digest is of every file's name and bytes, the
    ones no image used included, so it names the exact labels a figure was computed against."""
    (tmp_path / "labelmap.txt").write_text("background:0,0,0::\ndisc:1,1,1::\n")
    for name in ("a", "b", "c"):
        _palette_mask(tmp_path / "SegmentationClass" / f"{name}.png", np.eye(3) * (name != "b"))
    reads = record_reads(monkeypatch)
    truth = open_truth(str(tmp_path))
    assert [Path(uri).name for uri in reads] == ["labelmap.txt"]
    truth.read("a.jpg", MODEL, 0)
    assert [Path(uri).name for uri in reads] == ["labelmap.txt", "a.png"]
    assert truth.sha256 == _digest_of_folder(tmp_path)
    assert sorted(Path(uri).name for uri in reads) == ["a.png", "b.png", "c.png", "labelmap.txt"]


def test_a_mask_whose_name_is_not_utf8_is_read_by_its_exact_name(tmp_path: Path) -> None:
    """The listing keeps a URI only for a name that does not join back to it: a local file
    name that is not UTF-8, listed by its printable form. It is still hashed from its bytes."""
    folder = tmp_path / "SegmentationClass"
    _palette_mask(folder / "a.png", np.eye(3))
    odd = Path(os.fsdecode(os.fsencode(folder) + b"/caf\xe9.png"))
    _palette_mask(odd, np.eye(3) * 2)
    truth = open_truth(str(tmp_path))
    kept = truth.listing.odd_uris()  # type: ignore[attr-defined]
    assert kept == {"SegmentationClass/caf\\xe9.png": str(odd)}
    expected = hashlib.sha256()
    for name, data in sorted(
        [
            ("SegmentationClass/a.png", (folder / "a.png").read_bytes()),
            ("SegmentationClass/caf\\xe9.png", odd.read_bytes()),
        ]
    ):
        expected.update(f"{name}\t{hashlib.sha256(data).hexdigest()}\n".encode())
    assert truth.sha256 == expected.hexdigest()


def _digest_of_folder(folder: Path) -> str:
    expected = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        expected.update(f"{name}\t{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return expected.hexdigest()


def test_the_listing_on_disk_answers_as_dicts_of_the_names_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing lives in SQLite; masks found, labels unused and the digest must be what
    plain Python gives: names that sort by code point unlike by UTF-16 or case, a stem listed
    as both .PNG and .png (the later name wins, as a dict built in name order), and more files
    than one batch of the listing's passes."""
    monkeypatch.setattr(truth_listing, "_BATCH", 3)
    stems = ["a", "B", "caf\u00e9/x", "\uff5e", "z\U0001f600", "\u65e5\u672c/1", "a b", "Z"]
    stems += [f"s/{i:02d}" for i in range(12)]
    folder = tmp_path / "SegmentationClass"
    for i, stem in enumerate(stems):
        _palette_mask(folder / f"{stem}.png", np.full((2, 2), i % 4))
    _palette_mask(folder / "a.PNG", np.full((2, 2), 3))  # listed before a.png
    truth = open_truth(str(tmp_path))
    assert truth.read("a.jpg", MODEL, 0).tolist() == [[0, 0]] * 2  # a.png's, not a.PNG's
    by_stem = {p.relative_to(folder).as_posix()[:-4]: p for p in sorted(folder.rglob("*.*"))}
    used = [f"{stem}.jpg" for stem in stems[::3]] + ["nowhere.jpg"]
    expected = sorted(
        f"SegmentationClass/{p.relative_to(folder).as_posix()}"
        for stem, p in by_stem.items()
        if f"{stem}.jpg" not in used
    )
    assert list(truth.unmatched(used)) == expected
    assert truth.sha256 == _digest_of_folder(tmp_path)
    # index.csv pairs keys with masks instead: a key given twice keeps its last mask.
    (tmp_path / "index.csv").write_text(
        "key,mask\nk1,SegmentationClass/B.png\nk2,SegmentationClass/Z.png\n"
        "k1,SegmentationClass/s/03.png\n"
    )
    truth = open_truth(str(tmp_path))
    assert truth.read("k1", MODEL, 0).tolist() == [[3, 3]] * 2  # s/03 is stem 11
    assert not truth.has("a.jpg")
    assert list(truth.unmatched(["k2", "k3"])) == ["k1"]
    assert truth.sha256 == _digest_of_folder(tmp_path)
