"""Label Studio export: tasks and labeling config from class maps the export must reproduce.

The runs are ``semantic`` (one region per class), so each region's mask is just
``class_map == class_id``: a reference that owes nothing to the region or RLE code. Brush
masks are decoded by Label Studio's own converter, run in a venv of its own.
"""

from __future__ import annotations

import itertools
import json
import os
import posixpath
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps
from pydantic import ValidationError

from deeplab.scenes import scenes
from pipeline.config import RunConfig
from pipeline.formats import ExportError, ExportOptions, RunView, open_run
from pipeline.formats.label_studio import (
    brush_rle,
    check_image_urls,
    export_label_studio,
    label_config,
)
from pipeline.geometry.policy import RegionPolicy
from pipeline.labeling.annotate import annotate
from tests.helpers import iou, rasterize
from tests.runs import write_run

NAMES = ("background", 'a<b&"c"', "box", "tri angle", "disc")
# Tolerance 1 px simplifies the triangle (fidelity ~0.98, kept) and the disc (~0.92, to RLE).
POLICY = RegionPolicy(instances="semantic", min_area=1, simplify_tolerance=1.0, min_fidelity=0.95)
PORTRAIT, OTHER, FAILED = "portrait.png", "sub dir/other #1.png", "broken.png"

LS_SDK = "label-studio-sdk==2.1.2"
LS_DECODE = Path(__file__).parents[1] / "ls_reference" / "decode_brush.py"


def _portrait() -> np.ndarray:
    """Two rectangles of one class touching opposite corners (one region, two parts), a box
    with a hole, a triangle, a disc; 200 high, 120 wide so width and height cannot swap."""
    m = np.zeros((200, 120), np.uint8)
    m[0:30, 0:25] = 1
    m[170:200, 90:120] = 1
    m[40:90, 10:60] = 2
    m[55:70, 25:40] = 0
    cv2.fillPoly(m, [np.array([[70, 40], [115, 60], [80, 110]], np.int32)], 3)
    cv2.circle(m, (40, 140), 9, 4, -1)
    return m


def _other() -> np.ndarray:
    """Landscape; class 1 fills the last two rows, so its runs join across rows to the end."""
    m = np.zeros((50, 70), np.uint8)
    m[48:, :] = 1
    m[10:30, 20:45] = 3
    return m


MAPS = {PORTRAIT: _portrait(), OTHER: _other()}


@pytest.fixture(scope="module")
def view(tmp_path_factory: pytest.TempPathFactory) -> RunView:
    out = tmp_path_factory.mktemp("ls") / "run"
    return write_run(out, MAPS, class_names=NAMES, policy=POLICY, failed={FAILED: "bad bytes"})


def _export(view: RunView, **options: Any) -> tuple[list[dict[str, Any]], ET.Element]:
    uris = export_label_studio(view, ExportOptions(**options))
    assert [Path(uri).name for uri in uris] == ["label-studio.json", "label-config.xml"]
    assert all(Path(uri).parent == Path(view.layout.root) / "exports" for uri in uris)
    tasks = json.loads(Path(uris[0]).read_text())
    return tasks, ET.fromstring(Path(uris[1]).read_text())


def _regions(view: RunView) -> dict[str, list[dict[str, Any]]]:
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    keys = {row["image_id"]: row["key"] for row in view.images.to_pylist()}
    for row in view.regions.to_pylist():
        by_key[keys[row["image_id"]]].append(row)
    return by_key


def _region_of(result: dict[str, Any]) -> str:
    return str(result["id"]).split("-")[0]


def test_one_task_per_labeled_image_scored_by_mean_confidence(view: RunView) -> None:
    tasks, _ = _export(view)
    images = {row["key"]: row for row in view.images.to_pylist()}
    assert [task["data"]["key"] for task in tasks] == sorted(MAPS)  # no task for FAILED
    for task in tasks:
        image = images[task["data"]["key"]]
        assert task["data"]["image"] == image["uri"]
        assert task["data"]["prelabel_image_id"] == image["image_id"]
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == view.model.model_version
        assert prediction["score"] == pytest.approx(image["mean_confidence"], abs=1e-4)


def test_image_url_prefix_takes_the_quoted_key(view: RunView) -> None:
    prefix = "https://images.example/bucket/"
    tasks, _ = _export(view, image_url_prefix=prefix)
    for task in tasks:
        ref, key = task["data"]["image"], task["data"]["key"]
        assert ref.startswith(prefix)
        parts = urlsplit(ref)
        assert (parts.query, parts.fragment) == ("", "")  # "#" in the key stays in the path
        assert unquote(parts.path) == "/bucket/" + key
        assert ref[len(prefix) :].count("/") == key.count("/")


def _served_path(url: str, document_root: str) -> str:
    """The file Label Studio serves for ``url`` (core.views.localfiles_data): the ``d`` query
    parameter, decoded as Django decodes a query string, normalised and joined to
    LOCAL_FILES_DOCUMENT_ROOT."""
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path, parts.fragment) == ("", "", LS_FILES, "")
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=True)
    assert list(query) == ["d"] and len(query["d"]) == 1
    return posixpath.join(document_root, posixpath.normpath(query["d"][0]).lstrip("/"))


LS_FILES = "/data/local-files/"  # Label Studio's route for files under its document root


def test_local_files_urls_are_what_label_studio_serves(tmp_path: Path) -> None:
    source = tmp_path / "photos"
    keys = ["plain.png", "sub dir/a+b&c=d%25e?#1.png", "ünï/名前.png"]
    maps = {key: np.ones((4, 5), np.uint8) for key in keys}
    view = write_run(tmp_path / "run", maps, source=str(source))
    tasks, _ = _export(view, local_files_root=str(tmp_path))
    uris = {row["key"]: row["uri"] for row in view.images.to_pylist()}
    for task in tasks:
        assert _served_path(task["data"]["image"], str(tmp_path)) == uris[task["data"]["key"]]
    by_key = {task["data"]["key"]: task["data"]["image"] for task in tasks}
    # As Label Studio's local files storage writes it: quote() of the path under the root.
    assert by_key["plain.png"] == "/data/local-files/?d=photos/plain.png"
    assert (
        by_key["ünï/名前.png"] == "/data/local-files/?d=photos/%C3%BCn%C3%AF/%E5%90%8D%E5%89%8D.png"
    )


def test_local_files_root_is_a_folder_compared_by_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = write_run(tmp_path / "run", {"a.png": np.ones((3, 3), np.uint8)}, source="/srv/photos")
    (task,), _ = _export(view, local_files_root="/")
    assert task["data"]["image"] == "/data/local-files/?d=srv/photos/a.png"
    (task,), _ = _export(view, local_files_root="/srv/other/../photos/")
    assert task["data"]["image"] == "/data/local-files/?d=a.png"
    monkeypatch.chdir(tmp_path)  # a relative root is taken from where the command runs
    assert ExportOptions(local_files_root="x/../photos/").local_files_root == str(
        tmp_path / "photos"
    )


@pytest.mark.parametrize("root", ["/srv/photo", "/srv/photos/a.png/x", "/elsewhere"])
def test_an_image_outside_the_local_files_root_is_refused(tmp_path: Path, root: str) -> None:
    view = write_run(tmp_path / "run", {"a.png": np.ones((3, 3), np.uint8)}, source="/srv/photos")
    options = ExportOptions(local_files_root=root)
    with pytest.raises(ExportError) as refused:
        check_image_urls(view, options)
    message = str(refused.value)
    assert f"--local-files-root {root}: image /srv/photos/a.png is not under it" in message
    assert "LOCAL_FILES_DOCUMENT_ROOT" in message and "\n" not in message
    with pytest.raises(ExportError):
        export_label_studio(view, options)


def test_a_s3_source_is_refused_in_local_files_mode(tmp_path: Path) -> None:
    view = write_run(tmp_path / "run", {"a.png": np.ones((3, 3), np.uint8)}, source="s3://b/p")
    with pytest.raises(ExportError, match=re.escape("image s3://b/p/a.png is not under it")):
        check_image_urls(view, ExportOptions(local_files_root="/"))


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"local_files_root": "s3://bucket/photos"}, "not a URL"),
        (
            {"local_files_root": "/srv", "image_url_prefix": "https://x/"},
            "image_url_prefix and local_files_root both given",
        ),
    ],
)
def test_image_url_options_that_cannot_work_are_refused(
    options: dict[str, str], error: str
) -> None:
    with pytest.raises(ValidationError, match=error):
        ExportOptions(**options)


def test_local_paths_get_a_notice_naming_the_flags_that_change_them(tmp_path: Path) -> None:
    maps = {key: np.ones((3, 3), np.uint8) for key in ("a.png", "b.png")}
    local = write_run(tmp_path / "local", maps, source="/srv/photos")
    notice = check_image_urls(local, ExportOptions())
    assert notice is not None and "\n" not in notice
    assert "absolute local paths (/srv/photos/a.png and 1 more)" in notice
    assert "--image-url-prefix" in notice and "--local-files-root" in notice
    assert check_image_urls(local, ExportOptions(image_url_prefix="https://x/")) is None
    assert check_image_urls(local, ExportOptions(local_files_root="/srv")) is None
    bucket = write_run(tmp_path / "bucket", maps, source="s3://b/photos")
    assert check_image_urls(bucket, ExportOptions()) is None


def test_polygons_in_percent_reproduce_their_regions_and_the_rest_are_brush(
    view: RunView,
) -> None:
    tasks, _ = _export(view)
    regions = _regions(view)
    kinds = defaultdict(set)
    for task in tasks:
        key = task["data"]["key"]
        class_map = MAPS[key]
        height, width = class_map.shape
        results = defaultdict(list)
        for result in task["predictions"][0]["result"]:
            results[_region_of(result)].append(result)
        assert set(results) == {row["region_id"] for row in regions[key]}  # none lost
        for row in regions[key]:
            mine = results[row["region_id"]]
            holes = any(len(polygon) > 1 for polygon in row["polygons"])
            brush = row["geometry"] == "rle" or holes
            kinds[brush].add(row["geometry"] + ("+holes" if holes else ""))
            assert {r["type"] for r in mine} == {"brushlabels" if brush else "polygonlabels"}
            assert all(r["score"] == pytest.approx(row["score"], abs=1e-4) for r in mine)
            if brush:
                assert len(mine) == 1 and mine[0]["id"] == row["region_id"]
                assert mine[0]["value"]["brushlabels"] == [NAMES[row["class_id"]]]
                continue
            assert [r["id"] for r in mine] == [f"{row['region_id']}-{i}" for i in range(len(mine))]
            rings = []
            for result in mine:
                assert result["value"]["polygonlabels"] == [NAMES[row["class_id"]]]
                points = np.asarray(result["value"]["points"], np.float64)
                assert points.ndim == 2 and points.shape[1] == 2 and len(points) >= 3
                assert points.min() >= 0 and points.max() <= 100
                rings.append((points * (width, height) / 100).ravel().tolist())
            drawn = rasterize([[ring] for ring in rings], height, width)
            assert iou(drawn, class_map == row["class_id"]) == pytest.approx(row["fidelity"])
    # The fixture covers every path: exact and simplified polygons, holes, the RLE gate.
    assert kinds == {False: {"polygon"}, True: {"rle", "polygon+holes"}}
    fidelities = [r["fidelity"] for rows in regions.values() for r in rows]
    assert min(fidelities) < 0.95 < max(f for f in fidelities if f < 1)
    assert any(len(r["polygons"]) > 1 for rows in regions.values() for r in rows)


def test_brush_mode_writes_every_region_as_one_brush_result(view: RunView) -> None:
    tasks, _ = _export(view, ls_regions="brush")
    regions = _regions(view)
    for task in tasks:
        results = task["predictions"][0]["result"]
        assert [r["id"] for r in results] == [
            row["region_id"] for row in regions[task["data"]["key"]]
        ]
        assert all(r["type"] == "brushlabels" and r["from_name"] == "brush" for r in results)
        assert all(r["value"]["format"] == "rle" for r in results)


def test_original_size_is_the_oriented_image_size(view: RunView) -> None:
    tasks, _ = _export(view)
    for task in tasks:
        height, width = MAPS[task["data"]["key"]].shape
        for result in task["predictions"][0]["result"]:
            assert (result["original_width"], result["original_height"]) == (width, height)
            assert result["image_rotation"] == 0


def test_original_size_follows_exif_orientation_through_the_pipeline(tmp_path: Path) -> None:
    # Stored 120 wide x 160 high, shown (orientation 6: rotate 90 clockwise) 160 x 120.
    scene = next(scenes(7, 1, height=120, width=160))
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(scene.image)))
    exif = stored.getexif()
    exif[0x0112] = 6
    source = tmp_path / "images"
    source.mkdir()
    stored.save(source / "turned.png", exif=exif)
    with Image.open(source / "turned.png") as image:
        assert image.size == (120, 160)
        oriented = ImageOps.exif_transpose(image).size  # PIL's reading, not the pipeline's
    annotate(RunConfig(source=str(source), out=str(tmp_path / "run"), device="cpu"))
    tasks, _ = _export(open_run(str(tmp_path / "run")), ls_regions="brush")
    (task,) = tasks
    results = task["predictions"][0]["result"]
    assert results  # the demo model finds the scene's shapes
    for result in results:
        assert (result["original_width"], result["original_height"]) == oriented == (160, 120)


def test_config_lists_each_class_once_escaped_and_names_every_result_tag(view: RunView) -> None:
    for mode in ("polygon", "brush"):
        tasks, config = _export(view, ls_regions=mode)
        assert config.tag == "View"
        images = {e.get("name"): e for e in config.iter("Image")}
        assert images["image"].get("value") == "$image"
        controls = {e.get("name"): e for e in config if e.tag.endswith("Labels")}
        assert {e.tag for e in controls.values()} == {"PolygonLabels", "BrushLabels"}
        for control in controls.values():
            assert control.get("toName") in images
            labels = [label.get("value") for label in control.iter("Label")]
            assert labels == list(NAMES[1:])  # parsed back exactly, background left out
            colors = [label.get("background") for label in control.iter("Label")]
            assert all(len(c) == 7 and c[0] == "#" and int(c[1:], 16) >= 0 for c in colors)
            assert len(set(colors)) == len(colors)
        for task in tasks:
            for result in task["predictions"][0]["result"]:
                control = controls[result["from_name"]]
                assert control.tag.lower() == result["type"]
                assert result["to_name"] == control.get("toName")
                label = result["value"][result["type"]]
                assert label[0] in [e.get("value") for e in control.iter("Label")]
    raw = (Path(view.layout.root) / "exports" / "label-config.xml").read_text()
    assert 'a<b&"c"' not in raw and "a&lt;b&amp;" in raw


def test_config_without_background_lists_every_class() -> None:
    config = ET.fromstring(label_config(NAMES, None))
    for control in config.iter("BrushLabels"):
        assert [label.get("value") for label in control.iter("Label")] == list(NAMES)


# --- Brush RLE against Label Studio's own decoder -------------------------------------------

Decoder = Callable[[Sequence[tuple[list[int], int, int]]], list[np.ndarray]]


@pytest.fixture(scope="session")
def ls_decode(tmp_path_factory: pytest.TempPathFactory) -> Decoder:
    """Label Studio's ``decode_rle`` in a venv of its own under the user cache, built once
    (15-30 s from PyPI, about 500 MB): the SDK pins numpy and opencv below what this
    project uses, so it cannot share the project's venv."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    venv = cache / "prelabel-tests" / f"ls-sdk-{LS_SDK.split('==')[1]}-venv"
    python = venv / "bin" / "python"
    installed = venv / "installed"  # written last: a venv without it is rebuilt
    if not installed.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, LS_SDK], check=True)
        installed.touch()
    work = tmp_path_factory.mktemp("ls-decode")
    calls = itertools.count()

    def decode(items: Sequence[tuple[list[int], int, int]]) -> list[np.ndarray]:
        call = next(calls)
        source, target = work / f"in-{call}.json", work / f"out-{call}.npz"
        source.write_text(json.dumps([{"rle": r, "height": h, "width": w} for r, h, w in items]))
        subprocess.run([str(python), str(LS_DECODE), str(source), str(target)], check=True)
        with np.load(target) as decoded:
            return [decoded[f"decoded_{i}"] for i in range(len(items))]

    return decode


def _rgba(mask: np.ndarray) -> np.ndarray:
    return np.repeat(mask[:, :, None], 4, axis=2).astype(np.uint8) * 255


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["brush", "polygon"])
def test_brush_results_decode_with_label_studio_to_the_region_mask(
    view: RunView, ls_decode: Decoder, mode: str
) -> None:
    tasks, _ = _export(view, ls_regions=mode)
    class_of = {r["region_id"]: r["class_id"] for r in view.regions.to_pylist()}
    items, expected = [], []
    for task in tasks:
        class_map = MAPS[task["data"]["key"]]
        for result in task["predictions"][0]["result"]:
            if result["type"] == "brushlabels":
                items.append((result["value"]["rle"], *class_map.shape))
                expected.append(_rgba(class_map == class_of[result["id"]]))
    assert len(items) >= 2
    for decoded, reference in zip(ls_decode(items), expected, strict=True):
        assert decoded.dtype == np.uint8 and np.array_equal(decoded, reference)


def _edge_cases() -> list[tuple[np.ndarray, int, int, int, int]]:
    """(crop, x0, y0, height, width): runs at each run-length width's limit (2, 4 and 64
    pixels are 8, 16 and 256 bytes) and at 2**16 bytes (16384 pixels), each one either side;
    masks that start or end the image, fill it or are empty; crops off the origin."""
    cases = []
    for pixels in (1, 2, 3, 4, 5, 63, 64, 65, 16383, 16384, 16385, 32768, 32769, 40000):
        row = np.zeros((3, 20000), bool)
        row.ravel()[pixels : 2 * pixels] = True  # a zero run, then a mask run, as long
        cases += [(row, 0, 0, 3, 20000), (~row, 0, 0, 3, 20000)]
    rng = np.random.default_rng(5)
    for _ in range(20):
        height, width = rng.integers(1, 40, 2).tolist()
        crop_h, crop_w = rng.integers(1, height + 1), rng.integers(1, width + 1)
        y0, x0 = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
        crop = rng.random((crop_h, crop_w)) < rng.random()
        cases.append((crop, int(x0), int(y0), height, width))
    cases.append((np.ones((1, 1), bool), 6, 4, 5, 7))  # the very last pixel
    cases.append((np.zeros((5, 7), bool), 0, 0, 5, 7))
    return cases


@pytest.mark.integration
def test_brush_rle_edge_cases_decode_with_label_studio(ls_decode: Decoder) -> None:
    cases = _edge_cases()
    items = [
        (brush_rle(crop, x0=x0, y0=y0, height=h, width=w), h, w) for crop, x0, y0, h, w in cases
    ]
    for decoded, (crop, x0, y0, h, w) in zip(ls_decode(items), cases, strict=True):
        mask = np.zeros((h, w), bool)
        mask[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        assert np.array_equal(decoded, _rgba(mask))


def test_annotate_writing_tasks_with_local_paths_says_so(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    scene = next(scenes(3, 1, height=40, width=56))
    Image.fromarray(scene.image).save(source / "a.png")
    common = {
        "source": str(source),
        "device": "cpu",
        "engine": "torch",
        "exports": ["label-studio"],
    }
    local = annotate(RunConfig(out=str(tmp_path / "local"), **common))
    assert len(local.notes) == 1 and "absolute local paths" in local.notes[0]
    served = annotate(
        RunConfig(
            out=str(tmp_path / "served"),
            export_options=ExportOptions(image_url_prefix="https://x.test/"),
            **common,
        )
    )
    assert served.notes == ()
