"""The review page: order, escaping, failed images, counts, the images listed apart, thumbnails,
full-size views and overlays checked against the run's own tables and the maps it was made from;
then the pages as headless Chromium loads them, and as a user clicks through them."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from deeplab.scenes import scenes
from pipeline.config import RunConfig
from pipeline.formats import ExportError, RunView, open_run
from pipeline.geometry.class_maps import class_colours, class_map_of
from pipeline.geometry.policy import RegionPolicy
from pipeline.labeling.annotate import annotate
from pipeline.review.report import one_class_images, write_report
from pipeline.review.sync import PushRecord
from pipeline.review.thumbnails import ALPHA, NEUTRAL, paint, review_pictures
from tests.browser import chromium
from tests.labeling.test_uncertainty import _ambiguous
from tests.runs import SHARD, write_run

IMG = "<img src=x onerror=alert(1)>"
SCRIPT = "<script>document.title='pwned'</script>"
HOSTILE_KEY = f"{IMG}.png"
SCRIPT_KEY = f"{SCRIPT}.png"  # a folder "<script>document.title='pwned'<" holding "script>.png"
QUOTES_KEY = "tom & jerry \"double\" 'single'.png"
CLASS_NAMES = ("background", IMG, "a & b \"double\" 'single'", SCRIPT, "box")
FAILED_KEY = "bad <b>bold</b>.png"
FAILED_REASON = f'/data/images/{FAILED_KEY}: not a readable image (<b> & "broken")'
# What the pages may contain at all: no script, frame, object, form, base or link element.
TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "table", "tbody", "tr",
    "th", "td", "span", "ol", "li", "img", "div", "a", "input", "label",
}  # fmt: skip
TITLE = "prelabel review"
SUFFIXES = (".png", ".jpg", ".overlay.png", ".html")  # an image's files in the report's folder


class Page(HTMLParser):
    """What a reader sees: elements, each item's key (in page order, with the section it is in),
    class counts and flag, the notes, and each table's rows as text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.keys: list[str] = []  # the text of each item's key, in page order
        self.sections: list[str] = []  # the id of the h2 above each key
        self.classes: list[list[str]] = []  # each item's "class count" texts
        self.flags: list[str] = []  # the text of each flag
        self.flag_keys: list[str] = []  # the key of the item each flag is in
        self.tables: dict[str, list[list[str]]] = {}  # by class: rows of cell texts
        self.title = ""
        self.notes: list[str] = []
        self.why: list[str] = []
        self._section = ""
        self._into: list[str] | None = None  # text goes to its last item
        self._in_title = False
        self._table: list[list[str]] | None = None
        self.feed(text)
        self.close()

    def flagged(self) -> dict[str, str]:
        """Key -> the text of its item's flag, for the items that have one."""
        return dict(zip(self.flag_keys, self.flags, strict=True))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.elements.append((tag, attributes))
        kind = attributes.get("class") or ""
        if tag == "h2":
            self._section = attributes.get("id") or ""
        if tag in ("p", "h1") and kind in ("key", "note", "flag", "why"):
            target = {"key": self.keys, "note": self.notes, "flag": self.flags, "why": self.why}[
                kind
            ]
            target.append("")
            self._into = target
            if kind == "key":
                self.sections.append(self._section)
            elif kind == "flag":
                self.flag_keys.append(self.keys[-1])  # a flag follows its item's key
        elif tag == "p" and kind == "classes":
            self.classes.append([])
        elif tag == "span" and kind == "class":
            self.classes[-1].append("")
            self._into = self.classes[-1]
        elif tag == "title":
            self._in_title = True
        elif tag == "table" and kind:
            self._table = self.tables.setdefault(kind, [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._table[-1].append("")
            self._into = self._table[-1]

    def handle_endtag(self, tag: str) -> None:
        if tag in ("p", "h1", "td", "th"):
            self._into = None
        self._in_title = self._in_title and tag != "title"
        if tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._into is not None:
            self._into[-1] += data
        if self._in_title:
            self.title += data


def assert_inert(page: Page, *, view: bool = False) -> None:
    """Only the pages' own elements; no handler attribute; images and links only to files of the
    report's folder named by image id, and from an image's page (``view``) back to the queue."""
    if view:
        images, links = r"[0-9a-f]{16}\.(jpg|overlay\.png)", r"\.\./report\.html#i-[0-9a-f]{16}"
    else:
        images, links = r"report/[0-9a-f]{16}\.png", r"report/[0-9a-f]{16}\.html|#one-class"
    for tag, attributes in page.elements:
        assert tag in TAGS, (tag, attributes)
        assert not [a for a in attributes if a.startswith("on")], (tag, attributes)
        if tag == "img":
            assert re.fullmatch(images, attributes["src"] or ""), attributes
        if tag == "a":
            assert re.fullmatch(links, attributes["href"] or ""), attributes
    metas = [a for tag, a in page.elements if tag == "meta"]
    csp = [a["content"] for a in metas if a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in (csp[0] or "")


def _set_priorities(out: Path, priorities: Mapping[str, float | None]) -> RunView:
    uri = out / "images" / f"{SHARD}.parquet"
    table = pq.read_table(uri)
    rows = table.to_pylist()
    for row in rows:
        if row["key"] in priorities:
            row["review_priority"] = priorities[row["key"]]
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), uri)
    return open_run(str(out))


def _map(height: int, width: int, classes: list[int]) -> np.ndarray:
    """Vertical bands of the given classes, the left one background."""
    class_map = np.zeros((height, width), np.uint8)
    for i, class_id in enumerate(classes, start=1):
        class_map[:, i * width // (len(classes) + 1) :] = class_id
    return class_map


EMPTY_KEY = "nothing <i>here</i>.png"  # all background: the model found nothing
FULL_KEY = "all & one.png"  # one class (named IMG) over the whole image
MAPS = {
    HOSTILE_KEY: _map(24, 32, [1, 2]),
    QUOTES_KEY: _map(24, 32, [3]),
    "../../escape.png": _map(24, 32, [4, 1]),
    "plain.png": _map(600, 300, [2, 3, 4]),  # larger than a thumbnail
    EMPTY_KEY: np.zeros((24, 32), np.uint8),
    FULL_KEY: np.ones((24, 32), np.uint8),
}
PRIORITIES = {HOSTILE_KEY: 0.4, QUOTES_KEY: 0.1, "../../escape.png": 0.7, "plain.png": 0.4}
ORDER = sorted(PRIORITIES, key=lambda key: (-PRIORITIES[key], key))
# Listed apart, by key, whatever their priority: the empty one ranks last, the full one first.
APART = sorted([EMPTY_KEY, FULL_KEY])
APART_PRIORITIES = {EMPTY_KEY: 0.0, FULL_KEY: 0.9}


@pytest.fixture
def hostile(tmp_path: Path) -> RunView:
    write_run(tmp_path / "run", MAPS, class_names=CLASS_NAMES, failed={FAILED_KEY: FAILED_REASON})
    return _set_priorities(tmp_path / "run", {**PRIORITIES, **APART_PRIORITIES})


def test_images_are_listed_by_priority_highest_first(hostile: RunView) -> None:
    report = write_report(hostile)
    page = Page(Path(report.page).read_text())
    assert page.keys == ORDER + APART
    assert page.sections == ["queue"] * len(ORDER) + ["one-class"] * len(APART)
    assert (report.shown, report.labeled, report.one_class, report.failed) == (6, 6, 2, 1)


def test_images_without_a_priority_come_last(hostile: RunView, tmp_path: Path) -> None:
    view = _set_priorities(tmp_path / "run", {HOSTILE_KEY: None, "plain.png": float("nan")})
    page = Page(Path(write_report(view).page).read_text())
    assert page.keys == ["../../escape.png", QUOTES_KEY, HOSTILE_KEY, "plain.png", *APART]


def test_one_class_over_the_whole_image_is_listed_apart_with_the_reason(hostile: RunView) -> None:
    page = Page(Path(write_report(hostile).page).read_text())
    # Every image with a single class is flagged, saying which class and why, and no other is.
    assert page.flagged() == {
        EMPTY_KEY: "one classListed apart: every pixel is \u201cbackground\u201d (mean confidence "
        "80.0%). Confidence cannot tell a miss the model is sure of from an image with nothing "
        "to label: check which this is.",
        FULL_KEY: f"one classListed apart: every pixel is \u201c{IMG}\u201d (mean confidence "
        "80.0%). Confidence cannot tell a miss the model is sure of from an image with nothing "
        "to label: check which this is.",
    }
    (why,) = page.why
    assert "would come last, as the least doubtful" in why
    assert "2 images are one class over the whole image, listed apart below" in page.notes[0]
    badges = [a for tag, a in page.elements if tag == "span" and a.get("class") == "badge"]
    assert len(badges) == len(APART)


def test_one_class_images_are_those_whose_painted_map_has_one_class(tmp_path: Path) -> None:
    """Checked against the class map painted back from each image's regions: no region at all,
    regions of one class covering every pixel, and near misses of both."""
    speck = np.zeros((20, 30), np.uint8)
    speck[5, 5] = 2  # under min_area: dropped, so the map the run keeps is all background
    almost = np.full((20, 30), 2, np.uint8)
    almost[0, 0] = 0
    two = np.ones((20, 30), np.uint8)
    two[:, 15:] = 3
    maps = {
        "empty.png": np.zeros((20, 30), np.uint8),
        "speck.png": speck,
        "all-box.png": np.full((20, 30), 2, np.uint8),
        "almost.png": almost,
        "two-classes.png": two,
    }
    for background in (0, None):
        out = tmp_path / f"run-{background}"
        policy = RegionPolicy(min_area=2, background=background)
        view = write_run(out, maps, policy=policy)
        rows = view.regions.to_pylist()
        expected = {}
        for image in view.images.to_pylist():
            mine = [r for r in rows if r["image_id"] == image["image_id"]]
            classes = np.unique(class_map_of(mine, image["height"], image["width"], background))
            if len(classes) == 1:
                expected[image["image_id"]] = int(classes[0])
        assert one_class_images(view.images, view.regions, view.background) == expected
        flagged = {row["key"] for row in view.images.to_pylist() if row["image_id"] in expected}
        assert flagged == {"empty.png", "speck.png", "all-box.png"}, background


def test_each_image_shows_its_figures_and_regions_per_class(hostile: RunView) -> None:
    page = Page(Path(write_report(hostile).page).read_text())
    rows = {row["key"]: row for row in hostile.images.to_pylist()}
    records = pq.read_table(hostile.layout.root + "/records").to_pylist()
    figures = page.tables["figures"]
    for i, key in enumerate(page.keys):
        row = rows[key]
        shown = dict(zip(figures[2 * i], figures[2 * i + 1], strict=True))
        assert shown == {
            "priority": f"{row['review_priority']:.1%}",
            "mean confidence": f"{row['mean_confidence']:.1%}",
            "low confidence": f"{row['low_confidence_share']:.1%}",
            "boundary uncertainty": f"{row['boundary_uncertainty']:.1%}",
            "fragments": str(row["fragments"]),
            "regions": str(row["region_count"]),
            "size": f"{MAPS[key].shape[1]}\u00d7{MAPS[key].shape[0]} px",
        }
        counts = Counter(r["class_id"] for r in records if r["image_id"] == row["image_id"])
        assert page.classes[i] == [f"{CLASS_NAMES[c]} {n}" for c, n in sorted(counts.items())]
        assert sum(counts.values()) == row["region_count"]


def test_every_string_from_data_is_escaped(hostile: RunView) -> None:
    report = write_report(hostile)
    text = Path(report.page).read_text()
    for value in (*CLASS_NAMES, *MAPS, FAILED_KEY, FAILED_REASON):
        assert html.escape(value, quote=True) in text, value
    for raw in (IMG, SCRIPT, "<b>", "<i>", QUOTES_KEY, CLASS_NAMES[2], FULL_KEY):
        assert raw not in text, raw
    page = Page(text)
    assert_inert(page)
    assert page.title == TITLE
    assert set(MAPS) <= set(page.keys)  # as text, exactly as the keys are
    legend = [row[0] for row in page.tables["legend"][1:]]
    assert legend == list(CLASS_NAMES)
    # Each image's own page: its key as text in the title and heading, nothing else let in.
    for row in hostile.ok_images():
        view_text = (Path(report.page).parent / "report" / f"{row['image_id']}.html").read_text()
        assert html.escape(row["key"], quote=True) in view_text
        for raw in (IMG, SCRIPT, "<i>", QUOTES_KEY, FULL_KEY):
            assert raw not in view_text, raw
        view = Page(view_text)
        assert_inert(view, view=True)
        assert view.title == f"{row['key']} - {TITLE}"
        assert view.keys == [row["key"]]


def _links(path: Path) -> list[str]:
    return [a["href"] or "" for tag, a in Page(path.read_text()).elements if tag == "a"]


def test_a_pushed_run_links_each_image_to_its_label_studio_task(hostile: RunView) -> None:
    rows = hostile.ok_images()
    tasks = {row["image_id"]: 100 + i for i, row in enumerate(rows)}
    record = PushRecord(url="http://ls.test:8080/", project="p", project_id=7, tasks=tasks)
    hostile.layout.storage.write_atomic(hostile.layout.pushed, record.model_dump_json().encode())
    report = write_report(hostile, source_images=False)
    queue = _links(Path(report.page))
    for row in rows:
        task = f"http://ls.test:8080/projects/7/data?task={tasks[row['image_id']]}"
        assert task in queue
        assert task in _links(Path(report.page).parent / "report" / f"{row['image_id']}.html")

    # A record whose address is not a web address (hand-edited, say) links nothing.
    hostile.layout.storage.write_atomic(
        hostile.layout.pushed,
        record.model_copy(update={"url": "javascript:alert(1)"}).model_dump_json().encode(),
    )
    report = write_report(hostile, source_images=False)
    assert "javascript" not in Path(report.page).read_text()
    assert_inert(Page(Path(report.page).read_text()))


def test_failed_images_are_listed_with_their_reasons(hostile: RunView) -> None:
    page = Page(Path(write_report(hostile).page).read_text())
    assert page.tables["failed"][1:] == [[FAILED_KEY, FAILED_REASON]]
    assert FAILED_KEY not in page.keys


def test_legend_counts_regions_per_class_and_facts_come_from_run_json(hostile: RunView) -> None:
    page = Page(Path(write_report(hostile).page).read_text())
    records = pq.read_table(hostile.layout.root + "/records").column("class_name").to_pylist()
    expected = [
        [name, "not painted" if i == 0 else str(Counter(records)[name])]
        for i, name in enumerate(CLASS_NAMES)
    ]
    assert page.tables["legend"][1:] == expected
    manifest = json.loads(Path(hostile.layout.manifest).read_text())
    facts = dict(page.tables["facts"])
    assert facts["model version"] == manifest["model"]["model_version"]
    assert facts["images"] == f"{manifest['images']} ({manifest['images_failed']} failed)"
    assert facts["regions"] == str(manifest["regions"])


def test_report_files_are_named_by_image_id_and_stay_in_their_folder(
    hostile: RunView, tmp_path: Path
) -> None:
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    report = write_report(hostile)
    folder = Path(hostile.layout.root) / "exports" / "report"
    ids = {row["key"]: row["image_id"] for row in hostile.images.to_pylist()}
    shown = [ids[key] for key in ORDER + APART]
    names = {f"{image_id}{suffix}" for image_id in shown for suffix in SUFFIXES}
    assert {p.name for p in folder.iterdir()} == names
    made = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    assert made == {folder / name for name in names} | {Path(report.page)}
    assert set(report.written) == {str(path) for path in made}
    page = Page(Path(report.page).read_text())
    sources = [a["src"] for tag, a in page.elements if tag == "img"]
    assert sources == [f"report/{image_id}.png" for image_id in shown]
    # The thumbnail and the key both open the image's page.
    links = [a["href"] for tag, a in page.elements if tag == "a" and a["href"] != "#one-class"]
    assert links == [f"report/{image_id}.html" for image_id in shown for _ in range(2)]


def test_an_unreadable_original_gets_the_overlay_on_grey_and_a_note(hostile: RunView) -> None:
    report = write_report(hostile)  # write_run's originals do not exist
    assert report.notes == 6
    page = Page(Path(report.page).read_text())
    assert len([n for n in page.notes if n.startswith("original not readable: ")]) == 6
    colours = class_colours(len(CLASS_NAMES), 0)
    folder = Path(report.page).parent / "report"
    for row in hostile.ok_images():
        thumb = np.asarray(Image.open(folder / f"{row['image_id']}.png"))
        view = np.asarray(Image.open(folder / f"{row['image_id']}.jpg"))
        layer = np.asarray(Image.open(folder / f"{row['image_id']}.overlay.png"))
        class_map = MAPS[row["key"]]
        assert view.shape == (*class_map.shape, 3)  # full size: the views' limit is far above
        assert np.abs(view.astype(int) - NEUTRAL).max() <= 2  # grey, as JPEG keeps it
        _assert_layer(layer, class_map, colours)
        if class_map.shape == (600, 300):  # shrunk: the longer side is 256
            assert thumb.shape == (256, 128, 3)
            continue
        _assert_painted(
            thumb, np.full((*class_map.shape, 3), NEUTRAL, np.uint8), class_map, colours
        )


def test_a_limit_shows_the_most_doubtful_and_says_how_many_were_left_out(
    hostile: RunView,
) -> None:
    report = write_report(hostile, limit=1)
    page = Page(Path(report.page).read_text())
    assert page.keys == [ORDER[0], APART[0]]
    assert "Showing the 1 most doubtful of 4 ranked images" in " ".join(page.notes)
    assert "Showing the first 1, by key." in page.notes
    assert len(list((Path(report.page).parent / "report").iterdir())) == 2 * len(SUFFIXES)
    with pytest.raises(ExportError, match="limit must be at least 1"):
        write_report(hostile, limit=0)


def test_another_page_name_gets_its_own_folder(hostile: RunView, tmp_path: Path) -> None:
    page_uri = tmp_path / "elsewhere" / "review & more.html"
    report = write_report(hostile, page=str(page_uri), source_images=False)
    page = Page(page_uri.read_text())
    sources = [a["src"] or "" for tag, a in page.elements if tag == "img"]
    assert all(s.startswith("review%20%26%20more/") for s in sources)
    assert all((page_uri.parent / "review & more" / s.split("/")[1]).is_file() for s in sources)
    # Each link on the page opens a file there, and each image's page links back to the page.
    links = [a["href"] or "" for tag, a in page.elements if tag == "a"][1:]  # after #one-class
    assert links and all(link.startswith("review%20%26%20more/") for link in links)
    for link in links[::2]:
        view = page_uri.parent / "review & more" / link.split("/")[1]
        back = [a["href"] for tag, a in Page(view.read_text()).elements if tag == "a"]
        assert back == [f"../review%20%26%20more.html#i-{view.stem}"]
    assert report.notes == 0  # nothing was read, so nothing is missing
    with pytest.raises(ExportError, match=r"named \*\.html"):
        write_report(hostile, page=str(tmp_path / "report.txt"))


def test_outlines_stay_visible_on_any_content() -> None:
    """A disc painted over plain content of every kind, its own colour included: on each, every
    pixel of its edge is within 2 px of a painted pixel far from the content."""
    yy, xx = np.mgrid[0:40, 0:40]
    class_map = (((yy - 20) ** 2 + (xx - 20) ** 2) < 144).astype(np.uint8)
    _, edge, _, _ = _parts(class_map)
    for colours in (class_colours(5, 0), [(0, 0, 0), (250, 250, 120)]):  # dark, light classes
        for content in (colours[1], (0, 0, 0), (255, 255, 255), (128, 128, 128)):
            base = np.full((40, 40, 3), content, np.uint8)
            painted = paint(base, class_map, colours, 0).astype(int)
            far = np.pad(np.abs(painted - np.asarray(content)).max(axis=2) >= 100, 2)
            near_far = np.zeros_like(edge)  # within 2 px of a pixel far from the content
            for dy in range(5):
                for dx in range(5):
                    near_far |= far[dy : dy + 40, dx : dx + 40]
            assert near_far[edge].all(), (colours[1], content)


def _grow(mask: np.ndarray, steps: int) -> np.ndarray:
    """Every pixel within ``steps`` 4-neighbour steps of one in ``mask``."""
    for _ in range(steps):
        around = np.pad(mask, 1)
        mask = mask | around[:-2, 1:-1] | around[2:, 1:-1] | around[1:-1, :-2] | around[1:-1, 2:]
    return mask


def _parts(class_map: np.ndarray, line: int = 1) -> tuple[np.ndarray, ...]:
    """Background (class 0); each region's edge (within ``line`` steps of another class); the
    ring ``line`` steps deep just inside the edge; the fill inside that."""
    padded = np.pad(class_map, 1, mode="edge")
    inner = padded[1:-1, 1:-1]
    differs = (
        (padded[:-2, 1:-1] != inner)
        | (padded[2:, 1:-1] != inner)
        | (padded[1:-1, :-2] != inner)
        | (padded[1:-1, 2:] != inner)
    )
    background = class_map == 0
    edge = _grow(differs, line - 1) & ~background
    ring = _grow(edge, line) & ~edge & ~background
    return background, edge, ring, ~background & ~edge & ~ring


def _assert_strokes(strokes: np.ndarray, colours: np.ndarray) -> None:
    """Black or white, whichever is far from the class colour in lightness."""
    assert ((strokes == 0).all(axis=1) | (strokes == 255).all(axis=1)).all()
    luma = np.array([0.299, 0.587, 0.114])
    assert (np.abs(strokes @ luma - colours @ luma) >= 127).all()


def test_a_large_view_gets_wider_strokes(tmp_path: Path) -> None:
    """Over 1536 px, the view's strokes are 2 px: a browser shrinks it to fit its window."""
    class_map = _map(100, 3000, [1, 2, 3])
    view = write_run(tmp_path / "run", {"wide.png": class_map})
    (row,) = view.ok_images()
    colours = class_colours(len(CLASS_NAMES), 0)
    pictures = review_pictures(
        row, view.regions.to_pylist(), colours, 0, originals=None, max_pixels=10**8
    )
    assert pictures.view_size == (2048, 68) and pictures.thumbnail_size == (256, 9)
    layer = np.asarray(Image.open(BytesIO(pictures.overlay)))
    shrunk = np.asarray(Image.fromarray(class_map).resize((2048, 68), Image.Resampling.NEAREST))
    _assert_layer(layer, shrunk, colours, line=2)
    thumb = np.asarray(Image.open(BytesIO(pictures.thumbnail)))
    shrunk = np.asarray(Image.fromarray(class_map).resize((256, 9), Image.Resampling.NEAREST))
    _assert_painted(thumb, np.full((9, 256, 3), NEUTRAL, np.uint8), shrunk, colours)


def _assert_layer(
    layer: np.ndarray, class_map: np.ndarray, colours: list[tuple[int, int, int]], line: int = 1
) -> None:
    """The overlay layer: transparent on the background; each region's edge opaque in its class
    colour, and just inside it an opaque contrasting stroke; inside that, the class colour at
    ``ALPHA``."""
    background, edge, ring, fill = _parts(class_map, line)
    assert edge.any() == ring.any() == (len(np.unique(class_map)) > 1)
    colour = np.array(colours, np.uint8)[class_map]
    assert (layer[background] == 0).all()
    assert (layer[edge, :3] == colour[edge]).all() and (layer[edge, 3] == 255).all()
    assert (layer[ring, 3] == 255).all()
    _assert_strokes(layer[ring, :3], colour[ring])
    assert (layer[fill, :3] == colour[fill]).all()
    assert (np.abs(layer[fill, 3] / 255 - ALPHA) <= 0.5 / 255).all()


def _assert_painted(
    thumb: np.ndarray, base: np.ndarray, class_map: np.ndarray, colours: list[tuple[int, int, int]]
) -> None:
    """Background pixels are the base; region edges are the class colour, with the contrasting
    stroke inside them; region insides are the colour blended over the base."""
    background, edge, ring, fill = _parts(class_map)
    colour = np.array(colours, np.float64)[class_map]
    assert (thumb[background] == base[background]).all()
    assert (thumb[edge] == colour[edge]).all()
    _assert_strokes(thumb[ring], colour[ring])
    blended = (1 - ALPHA) * base[fill] + ALPHA * colour[fill]
    assert (np.abs(thumb[fill].astype(np.float64) - blended) <= 1).all()


# A real run: the demo model over easy and ambiguous scenes, hostile and unicode names, a photo of
# nothing it knows, one bad file, and one original deleted after labeling.

GONE = "gone.png"
FIELD = "field.png"


def _field(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A noisy two-colour gradient, as a wall or a sky photographs: no object in it."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([60 + 80 * x / width, 90 + 50 * y / height, 120 - 40 * x / width], axis=-1)
    return np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("real")
    source, out = root / "in", root / "run"
    keys = [
        "easy-0.png", "blurry-1.png", HOSTILE_KEY, SCRIPT_KEY, "夜景/写真.png", "blurry-5.png",
        "easy-6.png", GONE,
    ]  # fmt: skip
    rng = np.random.default_rng(8)
    for i, (key, scene) in enumerate(
        zip(keys, scenes(21, len(keys), height=96, width=128), strict=True)
    ):
        path = source / key
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene.image if i % 2 == 0 else _ambiguous(scene.image, rng)).save(path)
    Image.fromarray(_field(rng, 96, 128)).save(source / FIELD)
    (source / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png after all")
    annotate(RunConfig(source=str(source), out=str(out), device="cpu"))
    (source / GONE).unlink()
    return source, out


def _expected_order(out: Path) -> list[str]:
    """The ranked keys: the labeled images with regions, by priority. The field has none: it is
    one class over the whole image, and listed apart after them."""
    images = pq.read_table(out / "images").to_pylist()
    ok = [row for row in images if row["status"] == "ok"]
    assert [row["key"] for row in ok if row["region_count"] == 0] == [FIELD]
    ranked = [row for row in ok if row["region_count"] > 0]
    assert len({row["review_priority"] for row in ranked}) >= 4  # an order worth checking
    return [row["key"] for row in sorted(ranked, key=lambda r: (-r["review_priority"], r["key"]))]


def _class_map(row: Mapping[str, Any], regions: list[dict[str, Any]]) -> np.ndarray:
    """The image's class map, painted from its regions' RLE by pycocotools."""
    class_map = np.zeros((row["height"], row["width"]), np.uint8)
    for region in (r for r in regions if r["image_id"] == row["image_id"]):
        rle = {"size": [row["height"], row["width"]], "counts": region["rle"].encode()}
        class_map[mask_utils.decode(rle).astype(bool)] = region["class_id"]
    return class_map


@pytest.mark.slow
def test_thumbnails_paint_the_labels_over_the_original(real_run: tuple[Path, Path]) -> None:
    source, out = real_run
    start = time.perf_counter()
    report = write_report(open_run(str(out)))
    print(f"report of {report.shown} images written in {time.perf_counter() - start:.2f} s")
    images = {row["key"]: row for row in pq.read_table(out / "images").to_pylist()}
    regions = pq.read_table(out / "records").to_pylist()
    colours = class_colours(5, 0)
    folder = out / "exports" / "report"
    for key in ("easy-0.png", HOSTILE_KEY, GONE, FIELD):
        row = images[key]
        class_map = _class_map(row, regions)
        thumb = np.asarray(Image.open(folder / f"{row['image_id']}.png"))
        view = np.asarray(Image.open(folder / f"{row['image_id']}.jpg")).astype(int)
        layer = np.asarray(Image.open(folder / f"{row['image_id']}.overlay.png"))
        if key == GONE:
            base = np.full((*class_map.shape, 3), NEUTRAL, np.uint8)
        else:
            base = np.asarray(Image.open(source / key).convert("RGB"))
        _assert_painted(thumb, base, class_map, colours)
        _assert_layer(layer, class_map, colours)
        # The original at full size, through JPEG: far closer to it than to grey.
        assert np.abs(view - base).mean() < 6
        assert key == GONE or np.abs(view - NEUTRAL).mean() > 20
    page = Page(Path(report.page).read_text())
    assert page.keys == [*_expected_order(out), FIELD]
    (note,) = [note for note in page.notes if note.startswith("original not readable")]
    assert note.startswith(f"original not readable: {source / GONE}: cannot read")
    assert page.tables["failed"][1:] == [["broken.png", images["broken.png"]["error"]]]
    # The field is what the issue is about: sure, and nothing found, so it would rank last.
    field = images[FIELD]
    ok = [row for row in images.values() if row["status"] == "ok"]
    assert field["review_priority"] == min(row["review_priority"] for row in ok)
    assert field["mean_confidence"] > 0.99
    assert list(page.flagged()) == [FIELD]
    assert page.flagged()[FIELD].startswith(
        f"one classListed apart: every pixel is \u201cbackground\u201d (mean confidence "
        f"{field['mean_confidence']:.1%})."
    )


@pytest.mark.slow
def test_the_command_writes_the_page_and_refuses_a_missing_run(
    real_run: tuple[Path, Path], tmp_path: Path
) -> None:
    _, out = real_run
    command = [sys.executable, "-c", "from flows.cli import app; app()", "report"]
    env = {**os.environ, "COLUMNS": "200"}
    page = tmp_path / "page.html"
    done = subprocess.run(
        [*command, str(out), "--out", str(page), "--no-source-images", "--limit", "3"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"wrote {page}" in done.stderr
    assert (
        "4 of 9 labeled images shown (1 of one class over the whole image, listed apart), "
        "1 failed" in done.stderr
    )
    assert Page(page.read_text()).keys == [*_expected_order(out)[:3], FIELD]
    missing = subprocess.run(
        [*command, str(tmp_path / "nothing")],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr
    assert "not a finished run folder" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            chromium(), "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", f"--user-data-dir={profile}", *args,
        ],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip


def _screenshot(profile: Path, page: Path, shot: Path) -> np.ndarray:
    _chromium(profile, f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri())
    with Image.open(shot) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def _found_at(shot: np.ndarray, thumb: np.ndarray) -> int | None:
    """The row at which ``thumb`` appears pixel for pixel in the screenshot, if it does."""
    first = thumb[0].tobytes()
    for y in range(shot.shape[0] - thumb.shape[0] + 1):
        at = shot[y].tobytes().find(first)
        if at >= 0 and at % 3 == 0:
            x = at // 3
            if (shot[y : y + thumb.shape[0], x : x + thumb.shape[1]] == thumb).all():
                return y
    return None


@pytest.mark.integration
@pytest.mark.slow
def test_chromium_shows_the_thumbnails_in_priority_order(
    real_run: tuple[Path, Path], tmp_path: Path
) -> None:
    _, out = real_run
    page = Path(write_report(open_run(str(out))).page)
    shot = _screenshot(tmp_path / "profile", page, tmp_path / "shot.png")
    assert shot.shape == (2000, 1200, 3)
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 100  # not a blank or flat page
    # The thumbnails drawn pixel for pixel, top to bottom in priority order, as far as they fit.
    rows = {row["key"]: row for row in pq.read_table(out / "images").to_pylist()}
    found = []
    for key in _expected_order(out):
        thumb = np.asarray(Image.open(page.parent / "report" / f"{rows[key]['image_id']}.png"))
        found.append(_found_at(shot, thumb))
    shown = [y for y in found if y is not None]
    assert found[0] is not None and len(shown) >= 3, found
    assert found[: len(shown)] == shown, found  # the ones that fit are the first ones
    assert shown == sorted(shown)
    # Without the thumbnail folder the page looks different: what was found was the thumbnails.
    bare = tmp_path / "bare" / "report.html"
    bare.parent.mkdir()
    shutil.copy(page, bare)
    assert _found_at(_screenshot(tmp_path / "profile", bare, tmp_path / "bare.png"), thumb) is None


@pytest.mark.integration
@pytest.mark.slow
def test_chromium_shows_hostile_names_as_text_and_runs_no_script(
    real_run: tuple[Path, Path], tmp_path: Path
) -> None:
    _, out = real_run
    page = Path(write_report(open_run(str(out))).page)
    dom = _chromium(tmp_path / "profile", "--dump-dom", page.as_uri()).stdout.decode()
    loaded = Page(dom)
    assert loaded.keys == [*_expected_order(out), FIELD]
    assert {HOSTILE_KEY, SCRIPT_KEY, "夜景/写真.png"} <= set(loaded.keys)
    assert_inert(loaded)
    assert loaded.title == TITLE  # the injected script would have set it to 'pwned'
    assert "pwned" not in " ".join(loaded.keys).replace(SCRIPT_KEY, "")
    assert '<img src="x"' not in dom and "onerror=" not in dom.replace(html.escape(IMG), "")
    # The image's own page, as loaded: the key as text, no script run.
    ids = {row["key"]: row["image_id"] for row in pq.read_table(out / "images").to_pylist()}
    view_uri = (page.parent / "report" / f"{ids[SCRIPT_KEY]}.html").as_uri()
    view = Page(_chromium(tmp_path / "profile", "--dump-dom", view_uri).stdout.decode())
    assert_inert(view, view=True)
    assert view.keys == [SCRIPT_KEY]
    assert view.title == f"{SCRIPT_KEY} - {TITLE}"
    # The same check sees a script that does run: a page without the escaping and the policy.
    control = tmp_path / "control.html"
    control.write_text(f"<!DOCTYPE html><title>{TITLE}</title><p class=key>{SCRIPT}</p>")
    ran = Page(_chromium(tmp_path / "profile", "--dump-dom", control.as_uri()).stdout.decode())
    assert ran.title == "pwned"


@pytest.mark.integration
def test_chromium_shows_hostile_class_names_as_text(hostile: RunView, tmp_path: Path) -> None:
    page = Path(write_report(hostile).page)
    loaded = Page(_chromium(tmp_path / "profile", "--dump-dom", page.as_uri()).stdout.decode())
    assert_inert(loaded)
    assert loaded.title == TITLE
    assert [row[0] for row in loaded.tables["legend"][1:]] == list(CLASS_NAMES)
    assert loaded.keys == ORDER + APART
    assert loaded.sections == ["queue"] * len(ORDER) + ["one-class"] * len(APART)
    assert set(loaded.flagged()) == set(APART)
    assert f"every pixel is \u201c{IMG}\u201d" in loaded.flagged()[FULL_KEY]
    assert loaded.tables["failed"][1:] == [[FAILED_KEY, FAILED_REASON]]


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``,
    no port and no extra package): it clicks where a user clicks, which ``--dump-dom`` and
    ``--screenshot`` cannot. ``evaluate`` is DevTools' own, not the page's: the page's policy
    still forbids every script of its own."""

    def __init__(self, profile: Path) -> None:
        exe = chromium()
        commands, self._commands = os.pipe()  # Chromium reads fd 3, writes fd 4
        self._answers, answers = os.pipe()

        def pipes() -> None:
            read, write = os.dup(commands), os.dup(answers)  # free 3 and 4 of either first
            os.dup2(read, 3)
            os.dup2(write, 4)

        self._process = subprocess.Popen(
            [
                exe, "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--hide-scrollbars",
                f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank",
            ],
            pass_fds=(3, 4), preexec_fn=pipes,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(commands)
        os.close(answers)
        self._buffer = b""
        self._events: list[dict[str, Any]] = []  # since the last action, not yet waited for
        self._id = 0
        self._session: str | None = None
        try:
            (target,) = [
                t for t in self._call("Target.getTargets")["targetInfos"] if t["type"] == "page"
            ]
            attached = self._call(
                "Target.attachToTarget", targetId=target["targetId"], flatten=True
            )
            self._session = attached["sessionId"]
            self._call("Page.enable")
            self._call(
                "Emulation.setDeviceMetricsOverride",
                width=1200, height=900, deviceScaleFactor=1, mobile=False,
            )  # fmt: skip
        except BaseException:
            self.__exit__(None, None, None)  # no browser left behind
            raise

    def __enter__(self) -> Browser:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._process.kill()
        self._process.wait(30)
        os.close(self._commands)
        os.close(self._answers)

    def open(self, uri: str) -> None:
        self._events.clear()
        self._call("Page.navigate", url=uri)
        self._wait_for("Page.loadEventFired")

    def location(self) -> str:
        return str(self.evaluate("location.href"))

    def evaluate(self, expression: str) -> Any:
        answer = self._call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in answer, answer
        return answer["result"].get("value")

    def box(self, selector: str) -> tuple[int, int, int, int]:
        """(x, y, width, height) in viewport pixels, scrolled into view."""
        found = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
            "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); "
            "return [r.x, r.y, r.width, r.height]; })()"
        )
        return tuple(round(value) for value in found)  # type: ignore[return-value]

    def click(self, selector: str, *, loads: bool = True) -> None:
        """A left click at the middle of the element, as a user's; ``loads``: wait for the
        page it opens."""
        x, y, width, height = self.box(selector)
        self._events.clear()
        for kind in ("mousePressed", "mouseReleased"):
            self._call(
                "Input.dispatchMouseEvent",
                type=kind, x=x + width / 2, y=y + height / 2, button="left", clickCount=1,
            )  # fmt: skip
        if loads:
            self._wait_for("Page.loadEventFired")

    def picture(self, selector: str) -> np.ndarray:
        """The element's pixels as the screen shows them."""
        x, y, width, height = self.box(selector)
        shot = self._call("Page.captureScreenshot", format="png")
        with Image.open(BytesIO(base64.b64decode(shot["data"]))) as image:
            return np.asarray(image.convert("RGB"))[y : y + height, x : x + width]

    def _call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if self._session is not None:
            message["sessionId"] = self._session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        answer = self._next(lambda m: m.get("id") == self._id)
        assert "error" not in answer, (method, answer)
        result: dict[str, Any] = answer["result"]
        return result

    def _wait_for(self, event: str) -> None:
        """Until ``event`` comes, or came since the last action while an answer was awaited."""
        for i, message in enumerate(self._events):
            if message["method"] == event:
                del self._events[: i + 1]
                return
        self._next(lambda m: m.get("method") == event)

    def _next(self, wanted: Any, timeout: float = 60) -> dict[str, Any]:
        """The next message ``wanted`` accepts; events it does not are kept for ``_wait_for``."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message: dict[str, Any] = json.loads(raw)
                if wanted(message):
                    return message
                if "method" in message:
                    self._events.append(message)
            left = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self._answers], [], [], left)
            assert ready, "Chromium did not answer in time"
            chunk = os.read(self._answers, 1 << 16)
            assert chunk, "Chromium closed the DevTools pipe"
            self._buffer += chunk


@pytest.mark.integration
@pytest.mark.slow
def test_a_click_on_a_thumbnail_opens_the_image_full_size_under_its_overlay(
    real_run: tuple[Path, Path], tmp_path: Path
) -> None:
    source, out = real_run
    page = Path(write_report(open_run(str(out))).page)
    images = {row["key"]: row for row in pq.read_table(out / "images").to_pylist()}
    regions = pq.read_table(out / "records").to_pylist()
    key = HOSTILE_KEY  # a name that must not become markup on the way
    name = images[key]["image_id"]
    with Browser(tmp_path / "profile") as browser:
        browser.open(page.as_uri())
        browser.click(f"#i-{name} img")
        assert browser.location() == (page.parent / "report" / f"{name}.html").as_uri()
        assert browser.evaluate("document.querySelector('h1').textContent") == key
        shown = browser.picture(".stack")
        browser.click("label[for=overlay]", loads=False)  # hide the overlay: the image beneath
        bare = browser.picture(".stack")
        browser.click(".nav a")  # back to where the image is in the queue
        assert browser.location() == f"{page.as_uri()}#i-{name}"
    # Beneath: the original at full size, pixel for pixel but for JPEG; not some other image.
    original = np.asarray(Image.open(source / key).convert("RGB")).astype(int)
    other = np.asarray(Image.open(source / "easy-0.png").convert("RGB")).astype(int)
    assert bare.shape == original.shape
    assert np.abs(bare - original).mean() < 6 < 20 < np.abs(bare - other).mean()
    # Shown: the overlay layer exactly where the labels are, laid over that image.
    layer = np.asarray(Image.open(page.parent / "report" / f"{name}.overlay.png")).astype(int)
    class_map = _class_map(images[key], regions)
    assert ((layer[..., 3] > 0) == (class_map != 0)).all()
    alpha = layer[..., 3:] / 255
    expected = bare * (1 - alpha) + layer[..., :3] * alpha
    assert np.abs(shown - expected).max() <= 2
    assert (np.abs(shown - bare).max(axis=2) > 60).sum() > 100  # the overlay is plain to see


@pytest.mark.integration
def test_a_click_opens_an_image_listed_apart_with_its_flag(
    hostile: RunView, tmp_path: Path
) -> None:
    page = Path(write_report(hostile, source_images=False).page)
    name = {row["key"]: row["image_id"] for row in hostile.images.to_pylist()}[EMPTY_KEY]
    with Browser(tmp_path / "profile") as browser:
        browser.open(page.as_uri())
        browser.click("a[href='#one-class']", loads=False)  # the note at the queue's top
        assert browser.location() == f"{page.as_uri()}#one-class"
        browser.click(f"#i-{name} .key a")
        assert browser.location() == (page.parent / "report" / f"{name}.html").as_uri()
        flag = browser.evaluate("document.querySelector('.flag').textContent")
        title = browser.evaluate("document.title")
    assert flag.startswith("one classListed apart: every pixel is \u201cbackground\u201d")
    assert title == f"{EMPTY_KEY} - {TITLE}"
