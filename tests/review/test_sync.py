"""``prelabel push`` / ``prelabel pull`` against a real Label Studio server on loopback.

Runs are made from known class maps (``tests.runs.write_run``), so what comes back from the
server is compared with exactly what was pushed: the tasks ``label_studio_tasks`` builds, and
the class maps ``class_map_of`` paints from the run's regions. Reviews are made the way a
reviewer's submit makes them, through the annotations API.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from PIL import Image

from deeplab.scenes import scenes
from pipeline.formats import ExportOptions, RunView
from pipeline.formats.label_studio import (
    brush_rle,
    decode_brush_rle,
    label_config,
    label_studio_tasks,
)
from pipeline.formats.masks import export_masks
from pipeline.geometry.class_maps import class_map_of
from pipeline.geometry.policy import RegionPolicy
from pipeline.geometry.polygons import rasterize_polygons
from pipeline.geometry.rle import region_crop
from pipeline.review.label_studio_api import LabelStudio, LabelStudioError, token_from_env
from pipeline.review.sync import pull, push, push_record
from tests.runs import write_run

if TYPE_CHECKING:
    from tests.label_studio_server import LabelStudioServer

pytest_plugins = ["tests.label_studio_server"]

_MAPS = {f"scene-{i}.png": scene.mask for i, scene in enumerate(scenes(7, 4, height=48, width=64))}
_HOLE = np.zeros((40, 50), np.uint8)
_HOLE[5:35, 5:45] = 2
_HOLE[15:25, 15:30] = 0  # a box with a hole: Label Studio polygons have none, so a brush mask
MAPS = {
    **_MAPS,
    "sub/a.jpg": _HOLE,  # a.jpg and a.png share a mask name: both get their image ids
    "sub/a.png": _MAPS["scene-1.png"][::-1].copy(),
    "empty.png": np.zeros((20, 30), np.uint8),  # no regions: a task with an empty prediction
}
# The same images, labeled differently by a "newer model".
NEWER = {key: np.roll(class_map, 3, axis=1) for key, class_map in MAPS.items()}


def _view(tmp_path: Path, name: str, maps: dict[str, np.ndarray]) -> RunView:
    return write_run(tmp_path / name, maps, failed={"broken.png": "not an image"})


def _title() -> str:
    return f"prelabel test {uuid.uuid4().hex[:8]}"  # each test its own project


def _cli(
    server: LabelStudioServer,
    home: Path,
    *args: str,
    token: str | None = None,
    token_variable: str = "LABEL_STUDIO_API_KEY",
) -> subprocess.CompletedProcess[str]:
    """``prelabel ARGS`` with the token in the environment and a home of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO")}
    home.mkdir(exist_ok=True)
    env.update({token_variable: token or server.token, "HOME": str(home)})
    return subprocess.run(
        [sys.executable, "-c", "from flows.cli import app; app()", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def _tasks(client: LabelStudio, title: str) -> dict[str, dict[str, Any]]:
    project = client.find_project(title)
    assert project is not None
    tasks = client.tasks(project["id"])
    by_image = {task["data"]["prelabel_image_id"]: task for task in tasks}
    assert len(by_image) == len(tasks)
    return by_image


def _truth(view: RunView) -> dict[str, np.ndarray]:
    """Image id -> the run's class map, painted from its regions."""
    regions: dict[str, list[dict[str, Any]]] = {}
    for row in view.regions.to_pylist():
        regions.setdefault(row["image_id"], []).append(row)
    return {
        image["image_id"]: class_map_of(
            regions.get(image["image_id"], []), image["height"], image["width"], view.background
        )
        for image in view.ok_images()
    }


def _review(client: LabelStudio, task: dict[str, Any]) -> list[dict[str, Any]]:
    """Submit the task's prediction unchanged as the reviewer's annotation."""
    result = copy.deepcopy(task["predictions"][0]["result"])
    for item in result:
        item.pop("score", None)  # a reviewer's results carry no model score
    client.create_annotation(task["id"], result)
    return result


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "P"
        return np.asarray(image)


# --- against the server --------------------------------------------------------------------


@pytest.mark.integration
def test_push_creates_the_project_and_its_tasks_arrive_intact(
    label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    view, title = _view(tmp_path, "run", MAPS), _title()
    done = _cli(label_studio, tmp_path / "home", "push", view.layout.root,
                "--label-studio", label_studio.url, "--project", title)  # fmt: skip
    assert done.returncode == 0, done.stderr
    built = label_studio_tasks(view, ExportOptions())
    assert f"{len(built)} created, 0 updated, 0 unchanged, 0 skipped" in done.stderr
    with LabelStudio(label_studio.url, label_studio.token) as client:
        project = client.find_project(title)
        assert project is not None
        config = label_config(view.class_names, view.background)
        assert project["label_config"] == config.strip()  # the server strips the end of line
        tasks = _tasks(client, title)
    assert len(tasks) == len(built) == len(MAPS)  # the failed image is left out
    kinds = set()
    for task in built:
        served = tasks[task["data"]["prelabel_image_id"]]
        assert served["data"] == task["data"]
        (prediction,) = served["predictions"]
        (expected,) = task["predictions"]
        assert prediction["model_version"] == expected["model_version"] == "v1"
        assert prediction["score"] == expected["score"]
        assert [r["id"] for r in prediction["result"]] == [r["id"] for r in expected["result"]]
        assert prediction["result"] == expected["result"]  # every value, e.g. points and RLE
        kinds |= {r["type"] for r in expected["result"]}
    assert kinds == {"polygonlabels", "brushlabels"}  # the box with a hole went as a brush
    # The run folder says where each image went, for the report's links.
    record = push_record(view)
    assert record is not None and record.project == title
    assert record.tasks == {image_id: task["id"] for image_id, task in tasks.items()}


@pytest.mark.integration
def test_a_second_push_duplicates_nothing(label_studio: LabelStudioServer, tmp_path: Path) -> None:
    view, title = _view(tmp_path, "run", MAPS), _title()
    # Pages of 3 tasks: the listing is read across pages, each task once.
    with LabelStudio(label_studio.url, label_studio.token, page_size=3) as client:
        first = push(client, view, title, ExportOptions())
        before = _tasks(client, title)
        second = push(client, view, title, ExportOptions())
        after = _tasks(client, title)
    assert (first.created, first.unchanged) == (len(MAPS), 0)
    assert (second.created, second.updated, second.unchanged, second.skipped) == (
        0,
        0,
        len(MAPS),
        0,
    )
    assert second.project_id == first.project_id
    assert {i: t["id"] for i, t in after.items()} == {i: t["id"] for i, t in before.items()}
    for image_id, task in after.items():
        assert [p["id"] for p in task["predictions"]] == [
            p["id"] for p in before[image_id]["predictions"]
        ]


@pytest.mark.integration
def test_a_newer_push_replaces_predictions_only_where_nobody_annotated(
    label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    # The newer push also moves the images behind a URL prefix: task data changes too.
    options = ExportOptions(ls_regions="brush")
    new_options = ExportOptions(ls_regions="brush", image_url_prefix="https://images.test/")
    old, new, title = _view(tmp_path, "old", MAPS), _view(tmp_path, "new", NEWER), _title()
    reviewed_key = "scene-2.png"
    with LabelStudio(label_studio.url, label_studio.token) as client:
        push(client, old, title, options)
        tasks = _tasks(client, title)
        task = next(t for t in tasks.values() if t["data"]["key"] == reviewed_key)
        # The reviewer relabels one region as another class and submits.
        result = copy.deepcopy(task["predictions"][0]["result"])
        relabeled, value = result[0]["id"], result[0]["value"]
        new_label = next(name for name in ("ring", "disc") if name != value["brushlabels"][0])
        value["brushlabels"] = [new_label]
        client.create_annotation(task["id"], result)
        summary = push(client, new, title, new_options)
        after = _tasks(client, title)
        pulled = pull(client, title, str(tmp_path / "pulled"))
    old_tasks = {t["data"]["prelabel_image_id"]: t for t in label_studio_tasks(old, options)}
    new_tasks = {t["data"]["prelabel_image_id"]: t for t in label_studio_tasks(new, new_options)}
    changed = {i for i in new_tasks if new_tasks[i]["predictions"] != old_tasks[i]["predictions"]}
    assert len(changed) == len(MAPS) - 1  # all but the empty image, whose data changed alone
    assert (summary.created, summary.updated, summary.unchanged, summary.skipped) == (
        0,
        len(MAPS) - 1,
        0,
        1,
    )
    for image_id, served in after.items():
        (prediction,) = served["predictions"]
        source = old_tasks if image_id == task["data"]["prelabel_image_id"] else new_tasks
        assert served["data"] == source[image_id]["data"]
        assert {k: prediction[k] for k in ("model_version", "score", "result")} == (
            source[image_id]["predictions"][0]
        )
    (annotation,) = after[task["data"]["prelabel_image_id"]]["annotations"]
    assert annotation["result"] == result
    # The pulled mask is the reviewer's: the old run's map with that region's class changed.
    regions = [
        r for r in old.regions.to_pylist() if r["image_id"] == task["data"]["prelabel_image_id"]
    ]
    new_class = old.class_names.index(new_label)
    edited = [{**r, "class_id": new_class} if r["region_id"] == relabeled else r for r in regions]
    height, width = MAPS[reviewed_key].shape
    expected = class_map_of(edited, height, width, old.background)
    assert not np.array_equal(expected, MAPS[reviewed_key])
    assert (pulled.masks, pulled.unannotated) == (1, len(MAPS) - 1)
    assert np.array_equal(_pixels(tmp_path / "pulled/SegmentationClass/scene-2.png"), expected)


@pytest.mark.integration
def test_pull_writes_the_masks_export_layout_and_reviews_come_back_exact(
    label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    view, title = _view(tmp_path, "run", MAPS), _title()
    with LabelStudio(label_studio.url, label_studio.token) as client:
        summary = push(client, view, title, ExportOptions(ls_regions="brush"))
        tasks = _tasks(client, title)
        unreviewed = next(i for i, t in tasks.items() if t["data"]["key"] == "scene-0.png")
        for image_id, task in tasks.items():
            if image_id != unreviewed:
                _review(client, task)
        # Someone else's task in the same project, reviewed: not prelabel's to pull.
        client.import_tasks(summary.project_id, [{"data": {"image": "https://x.test/o.png"}}])
        project = client.find_project(title)
        assert project is not None
        (foreign,) = (t for t in client.tasks(project["id"]) if "key" not in t["data"])
        client.create_annotation(foreign["id"], [])
    out = tmp_path / "pulled"
    done = _cli(label_studio, tmp_path / "home", "pull", "--label-studio", label_studio.url,
                "--project", title, "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"pulled {len(MAPS) - 1} masks" in done.stderr
    assert "1 tasks without annotations skipped, 1 tasks not from prelabel left out" in (
        " ".join(done.stderr.split())
    )
    export_masks(view, ExportOptions())
    exported = Path(view.layout.export("masks"))
    assert (out / "labelmap.txt").read_bytes() == (exported / "labelmap.txt").read_bytes()
    with (exported / "index.csv").open() as f:
        export_rows = {row["image_id"]: row for row in csv.DictReader(f)}
    pulled_rows = list(csv.DictReader(io.StringIO((out / "index.csv").read_text())))
    assert pulled_rows == [row for i, row in export_rows.items() if i != unreviewed]
    names = (exported / "ImageSets/Segmentation/default.txt").read_text().splitlines()
    unreviewed_name = export_rows[unreviewed]["mask"].removeprefix("SegmentationClass/")[:-4]
    assert (out / "ImageSets/Segmentation/default.txt").read_text().splitlines() == [
        name for name in names if name != unreviewed_name
    ]
    assert not (out / export_rows[unreviewed]["mask"]).exists()
    truth = _truth(view)
    assert sum("sub/a." in row["key"] for row in pulled_rows) == 2
    for row in pulled_rows:
        mask = out / row["mask"]
        assert np.array_equal(_pixels(mask), truth[row["image_id"]]), row["key"]
        with Image.open(mask) as got, Image.open(exported / row["mask"]) as reference:
            assert got.getpalette() == reference.getpalette()


@pytest.mark.integration
def test_pulled_polygons_draw_what_was_pushed_each_region_within_its_fidelity(
    label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    """Simplified polygons lose pixels (fidelity < 1); what comes back is what they draw."""
    lossy = RegionPolicy(min_area=1, simplify_tolerance=1.5, min_fidelity=0.8)
    view, title = write_run(tmp_path / "run", MAPS, policy=lossy), _title()
    with LabelStudio(label_studio.url, label_studio.token) as client:
        push(client, view, title, ExportOptions(ls_regions="polygon"))
        for task in _tasks(client, title).values():
            _review(client, task)
        served = _tasks(client, title)
        pulled = pull(client, title, str(tmp_path / "pulled"))
    assert (pulled.masks, pulled.unannotated) == (len(MAPS), 0)
    mask_of = {
        row["image_id"]: row["mask"]
        for row in csv.DictReader(io.StringIO((tmp_path / "pulled/index.csv").read_text()))
    }
    sizes = {image["image_id"]: (image["height"], image["width"]) for image in view.ok_images()}
    below_one = 0
    for image_id, task in served.items():
        (annotation,) = task["annotations"]
        height, width = sizes[image_id]
        expected = np.zeros((height, width), np.uint8)
        for region in (r for r in view.regions.to_pylist() if r["image_id"] == image_id):
            rid = region["region_id"]
            own = [
                r for r in annotation["result"] if r["id"] == rid or r["id"].startswith(rid + "-")
            ]
            x0, y0, crop = region_crop(region["rle"], height=height, width=width)
            truth = np.zeros((height, width), np.bool_)
            truth[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
            if own[0]["type"] == "brushlabels":
                expected[truth] = region["class_id"]
                continue
            rings = [np.asarray(r["value"]["points"]) * (width, height) / 100 for r in own]
            drawn = rasterize_polygons(
                tuple((tuple(ring.ravel()),) for ring in rings), (height, width)
            )
            iou = (drawn & truth).sum() / (drawn | truth).sum()
            assert iou >= region["fidelity"] - 1e-6, (task["data"]["key"], rid)
            below_one += iou < 1
            pushed = tuple(tuple(tuple(ring) for ring in polygon) for polygon in region["polygons"])
            expected[rasterize_polygons(pushed, (height, width))] = region["class_id"]
        assert np.array_equal(_pixels(tmp_path / "pulled" / mask_of[image_id]), expected)
    assert below_one >= 3  # the check saw polygons that really lose pixels


@pytest.mark.integration
def test_a_hand_drawn_brush_mask_pulls_as_its_opaque_pixels(
    label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    """The editor writes literal runs and soft (antialiased) alpha, which a push never does."""
    view, title = _view(tmp_path, "run", {"one.png": np.zeros((12, 16), np.uint8)}), _title()
    rng = np.random.default_rng(3)
    alpha = rng.choice(np.array([0, 40, 127, 128, 200, 255], np.uint8), size=(12, 16))
    rgba = np.dstack([np.full((12, 16), 200, np.uint8)] * 3 + [alpha]).ravel().tolist()
    result = {
        "id": "drawn",
        "from_name": "brush",
        "to_name": "image",
        "type": "brushlabels",
        "original_width": 16,
        "original_height": 12,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": _reference_rle(rgba), "brushlabels": ["triangle"]},
    }
    with LabelStudio(label_studio.url, label_studio.token) as client:
        push(client, view, title, ExportOptions())
        (task,) = _tasks(client, title).values()
        client.create_annotation(task["id"], [result])
        pull(client, title, str(tmp_path / "pulled"))
    expected = np.where(alpha >= 128, view.class_names.index("triangle"), 0)
    assert np.array_equal(_pixels(tmp_path / "pulled/SegmentationClass/one.png"), expected)


@pytest.mark.integration
def test_the_token_never_appears_in_output_logs_or_files(
    label_studio: LabelStudioServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    view, title, home = _view(tmp_path, "run", MAPS), _title(), tmp_path / "home"
    runs = [
        _cli(label_studio, home, "push", view.layout.root, "--label-studio", label_studio.url,
             "--project", title, "--ls-regions", "brush", token_variable="LABEL_STUDIO_TOKEN"),
        _cli(label_studio, home, "pull", "--label-studio", label_studio.url, "--project", title,
             "--out", str(tmp_path / "pulled")),
    ]  # fmt: skip
    assert [done.returncode for done in runs] == [0, 0], [done.stderr for done in runs]
    caplog.set_level(logging.DEBUG)  # httpx and httpcore log every request at DEBUG
    with LabelStudio(label_studio.url, label_studio.token) as client:
        push(client, view, title, ExportOptions())
        for task in _tasks(client, title).values():
            _review(client, task)
        pull(client, title, str(tmp_path / "pulled-here"))
        assert label_studio.token not in repr(client)
    assert "HTTP Request" in caplog.text  # the logs were there to look at
    outputs = [done.stdout + done.stderr for done in runs] + [caplog.text]
    assert all(label_studio.token not in text for text in outputs)
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert len(files) > 2 * len(MAPS)
    assert all(label_studio.token.encode() not in path.read_bytes() for path in files)


@pytest.mark.integration
def test_refusals_are_one_line_naming_the_url_never_the_token(
    label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    wrong = "f" * 40
    cases = {
        "refused (401)": (label_studio.url, wrong),
        "not found (404)": (f"{label_studio.url}/no-such-prefix", label_studio.token),
    }
    for words, (url, token) in cases.items():
        with LabelStudio(url, token) as client, pytest.raises(LabelStudioError) as raised:
            client.find_project("anything")
        message = str(raised.value)
        assert words in message and url in message and "\n" not in message
        assert token not in message
    view = _view(tmp_path, "run", MAPS)
    done = _cli(label_studio, tmp_path / "home", "push", view.layout.root,
                "--label-studio", label_studio.url, "--project", _title(), token=wrong)  # fmt: skip
    assert done.returncode == 2
    assert "refused (401)" in done.stderr and label_studio.url in done.stderr
    assert wrong not in done.stdout + done.stderr and "Traceback" not in done.stderr


@pytest.mark.integration
def test_the_brush_decoder_agrees_with_label_studio_s_own(label_studio: LabelStudioServer) -> None:
    rng = np.random.default_rng(11)
    values = np.repeat(rng.integers(0, 256, 300), rng.integers(1, 40, 300)).tolist()
    stream = _reference_rle(values)
    script = (
        "import json, sys; from label_studio_sdk.converter.brush import decode_rle; "
        "print(json.dumps(decode_rle(json.loads(sys.stdin.read())).tolist()))"
    )
    done = subprocess.run(
        [str(label_studio.venv_python), "-c", script],
        input=str(stream),
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = np.asarray(json.loads(done.stdout), np.uint8)
    assert np.array_equal(theirs, values)
    assert np.array_equal(decode_brush_rle(stream), theirs)


# --- without a server ----------------------------------------------------------------------


def _reference_rle(values: Sequence[int]) -> list[int]:
    """thi.ng rle-pack, written bit by bit: repeat tokens for runs of 3 or more equal values,
    literal tokens (flag 0, then every word) in between, as Label Studio's editor writes."""
    widths = (3, 4, 8, 16)
    bits = f"{len(values):032b}{7:05b}" + "".join(f"{w - 1:04b}" for w in widths)
    tokens: list[tuple[bool, list[int]]] = []
    at = 0
    while at < len(values):
        end = at
        while end < len(values) and values[end] == values[at] and end - at < 1 << 16:
            end += 1
        if end - at >= 3:
            tokens.append((True, list(values[at:end])))
        elif tokens and not tokens[-1][0] and len(tokens[-1][1]) + end - at <= 1 << 16:
            tokens[-1][1].extend(values[at:end])
        else:
            tokens.append((False, list(values[at:end])))
        at = end
    for repeat, words in tokens:
        size = next(i for i, w in enumerate(widths) if len(words) <= 1 << w)
        bits += f"{int(repeat)}{size:02b}{len(words) - 1:0{widths[size]}b}"
        bits += "".join(f"{w:08b}" for w in (words[:1] if repeat else words))
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


def test_decoding_the_push_encoder_gives_back_each_regions_mask(tmp_path: Path) -> None:
    view = _view(tmp_path, "run", MAPS)
    sizes = {image["image_id"]: (image["height"], image["width"]) for image in view.ok_images()}
    for region in view.regions.to_pylist():
        height, width = sizes[region["image_id"]]
        x0, y0, crop = region_crop(region["rle"], height=height, width=width)
        mask = np.zeros((height, width), np.bool_)
        mask[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        rle = brush_rle(crop, x0=x0, y0=y0, height=height, width=width)
        rgba = decode_brush_rle(rle).reshape(height, width, 4)
        assert np.array_equal(rgba, np.repeat(mask[:, :, None], 4, axis=2) * np.uint8(255))


def test_decoding_literal_runs_and_long_runs() -> None:
    rng = np.random.default_rng(5)
    values = np.concatenate(
        [rng.integers(0, 256, 50), np.full(70_000, 9), rng.integers(0, 3, 400), [255] * 5]
    ).tolist()
    assert np.array_equal(decode_brush_rle(_reference_rle(values)), values)


def test_a_cut_brush_stream_is_refused() -> None:
    stream = _reference_rle(list(range(40)))
    with pytest.raises(ValueError, match="ends before"):
        decode_brush_rle(stream[:-3])


def test_the_token_comes_from_either_variable_and_its_absence_is_one_line() -> None:
    assert token_from_env({"LABEL_STUDIO_API_KEY": " k1 ", "LABEL_STUDIO_TOKEN": "k2"}) == "k1"
    assert token_from_env({"LABEL_STUDIO_TOKEN": "k2"}) == "k2"
    with pytest.raises(LabelStudioError, match="LABEL_STUDIO_API_KEY or LABEL_STUDIO_TOKEN"):
        token_from_env({"LABEL_STUDIO_API_KEY": " "})


def test_cli_without_a_server_or_token_exits_2_in_one_line(tmp_path: Path) -> None:
    view = _view(tmp_path, "run", {"one.png": np.zeros((4, 4), np.uint8)})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO")}
    base = [sys.executable, "-c", "from flows.cli import app; app()"]
    cases = [
        ({}, ["push", view.layout.root, "--label-studio", closed, "--project", "p1x"], "API token"),
        (
            {"LABEL_STUDIO_API_KEY": "secret-" + "9" * 33},
            ["push", view.layout.root, "--label-studio", closed, "--project", "p1x"],
            "cannot connect",
        ),
        (
            {"LABEL_STUDIO_API_KEY": "secret-" + "9" * 33},
            ["pull", "--label-studio", closed, "--project", "p1x", "--out", str(tmp_path / "o")],
            "cannot connect",
        ),
        (
            {"LABEL_STUDIO_API_KEY": "secret-" + "9" * 33},
            ["push", str(tmp_path / "none"), "--label-studio", closed, "--project", "p1x"],
            "not a finished run folder",
        ),
    ]
    for extra, args, words in cases:
        done = subprocess.run(
            [*base, *args], capture_output=True, text=True, env={**env, **extra}, check=False
        )
        assert done.returncode == 2, done.stderr
        line = " ".join(done.stderr.split())
        assert words in line and "Traceback" not in done.stderr
        if words == "cannot connect":
            assert closed in line and "secret-" not in done.stdout + done.stderr
