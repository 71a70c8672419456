"""The review page: order, escaping, failed images, counts and thumbnails checked against the run's
own tables and the maps it was made from; then the page as headless Chromium loads it."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from deeplab.scenes import scenes
from pipeline.annotate import annotate
from pipeline.config import RunConfig
from pipeline.exporters import ExportError, RunView, open_run
from pipeline.exporters.class_maps import class_colours
from pipeline.report import write_report
from pipeline.thumbnails import ALPHA, NEUTRAL
from tests.runs import SHARD, write_run
from tests.test_uncertainty import _ambiguous

IMG = "<img src=x onerror=alert(1)>"
SCRIPT = "<script>document.title='pwned'</script>"
HOSTILE_KEY = f"{IMG}.png"
SCRIPT_KEY = f"{SCRIPT}.png"  # a folder "<script>document.title='pwned'<" holding "script>.png"
QUOTES_KEY = "tom & jerry \"double\" 'single'.png"
CLASS_NAMES = ("background", IMG, "a & b \"double\" 'single'", SCRIPT, "box")
FAILED_KEY = "bad <b>bold</b>.png"
FAILED_REASON = f'/data/images/{FAILED_KEY}: not a readable image (<b> & "broken")'
# What the page may contain at all: no script, frame, object, form, base or link element.
TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "table", "tbody", "tr",
    "th", "td", "span", "ol", "li", "img", "div",
}  # fmt: skip
TITLE = "prelabel review"


class Page(HTMLParser):
    """What a reader sees: elements, each queue item's key and class counts, the notes, and each
    table's rows as text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.keys: list[str] = []  # the text of each item's key, in page order
        self.classes: list[list[str]] = []  # each item's "class count" texts
        self.tables: dict[str, list[list[str]]] = {}  # by class: rows of cell texts
        self.title = ""
        self.notes: list[str] = []
        self._into: list[str] | None = None  # text goes to its last item
        self._in_title = False
        self._table: list[list[str]] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.elements.append((tag, attributes))
        kind = attributes.get("class") or ""
        if tag == "p" and kind in ("key", "note"):
            target = self.keys if kind == "key" else self.notes
            target.append("")
            self._into = target
        elif tag == "li" and kind == "image":
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
        if tag in ("p", "td", "th"):
            self._into = None
        self._in_title = self._in_title and tag != "title"
        if tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._into is not None:
            self._into[-1] += data
        if self._in_title:
            self.title += data


def assert_inert(page: Page) -> None:
    """Only the page's own elements; no handler attribute; images only from the thumbnail folder."""
    for tag, attributes in page.elements:
        assert tag in TAGS, (tag, attributes)
        assert not [a for a in attributes if a.startswith("on")], (tag, attributes)
        if tag == "img":
            assert re.fullmatch(r"report/[0-9a-f]{16}\.png", attributes["src"] or ""), attributes
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


MAPS = {
    HOSTILE_KEY: _map(24, 32, [1, 2]),
    QUOTES_KEY: _map(24, 32, [3]),
    "../../escape.png": _map(24, 32, [4, 1]),
    "plain.png": _map(600, 300, [2, 3, 4]),  # larger than a thumbnail
}
PRIORITIES = {HOSTILE_KEY: 0.4, QUOTES_KEY: 0.1, "../../escape.png": 0.7, "plain.png": 0.4}
ORDER = sorted(PRIORITIES, key=lambda key: (-PRIORITIES[key], key))


@pytest.fixture
def hostile(tmp_path: Path) -> RunView:
    write_run(tmp_path / "run", MAPS, class_names=CLASS_NAMES, failed={FAILED_KEY: FAILED_REASON})
    return _set_priorities(tmp_path / "run", PRIORITIES)


def test_images_are_listed_by_priority_highest_first(hostile: RunView) -> None:
    report = write_report(hostile)
    page = Page(Path(report.page).read_text())
    assert page.keys == ORDER
    assert (report.shown, report.labeled, report.failed) == (4, 4, 1)


def test_images_without_a_priority_come_last(hostile: RunView, tmp_path: Path) -> None:
    view = _set_priorities(tmp_path / "run", {HOSTILE_KEY: None, "plain.png": float("nan")})
    page = Page(Path(write_report(view).page).read_text())
    assert page.keys == ["../../escape.png", QUOTES_KEY, HOSTILE_KEY, "plain.png"]


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
    text = Path(write_report(hostile).page).read_text()
    for value in (*CLASS_NAMES, *MAPS, FAILED_KEY, FAILED_REASON):
        assert html.escape(value, quote=True) in text, value
    for raw in (IMG, SCRIPT, "<b>", QUOTES_KEY, CLASS_NAMES[2]):
        assert raw not in text, raw
    page = Page(text)
    assert_inert(page)
    assert page.title == TITLE
    assert set(MAPS) <= set(page.keys)  # as text, exactly as the keys are
    legend = [row[0] for row in page.tables["legend"][1:]]
    assert legend == list(CLASS_NAMES)


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


def test_thumbnails_are_named_by_image_id_and_stay_in_their_folder(
    hostile: RunView, tmp_path: Path
) -> None:
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    report = write_report(hostile)
    rows = {row["key"]: row for row in hostile.images.to_pylist()}
    folder = Path(hostile.layout.root) / "exports" / "report"
    names = [f"{rows[key]['image_id']}.png" for key in ORDER]
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)
    made = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    assert made == {folder / name for name in names} | {Path(report.page)}
    page = Page(Path(report.page).read_text())
    sources = [a["src"] for tag, a in page.elements if tag == "img"]
    assert sources == [f"report/{name}" for name in names]


def test_an_unreadable_original_gets_the_overlay_on_grey_and_a_note(hostile: RunView) -> None:
    report = write_report(hostile)  # write_run's originals do not exist
    assert report.notes == 4
    page = Page(Path(report.page).read_text())
    assert len([n for n in page.notes if n.startswith("original not readable: ")]) == 4
    colours = class_colours(len(CLASS_NAMES), 0)
    for row in hostile.images.to_pylist():
        if row["status"] != "ok":
            continue
        thumb = np.asarray(
            Image.open(Path(report.page).parent / "report" / f"{row['image_id']}.png")
        )
        class_map = MAPS[row["key"]]
        if class_map.shape == (600, 300):  # shrunk: the longer side is 256
            assert thumb.shape == (256, 128, 3)
            continue
        _assert_painted(
            thumb, np.full((*class_map.shape, 3), NEUTRAL, np.uint8), class_map, colours
        )


def test_a_limit_shows_the_most_doubtful_and_says_how_many_were_left_out(
    hostile: RunView,
) -> None:
    report = write_report(hostile, limit=2)
    page = Page(Path(report.page).read_text())
    assert page.keys == ORDER[:2]
    assert "Showing the 2 most doubtful of 4 labeled images" in " ".join(page.notes)
    assert len(list((Path(report.page).parent / "report").iterdir())) == 2
    with pytest.raises(ExportError, match="limit must be at least 1"):
        write_report(hostile, limit=0)


def test_another_page_name_gets_its_own_thumbnail_folder(hostile: RunView, tmp_path: Path) -> None:
    page_uri = tmp_path / "elsewhere" / "review & more.html"
    report = write_report(hostile, page=str(page_uri), source_images=False)
    page = Page(page_uri.read_text())
    sources = [a["src"] or "" for tag, a in page.elements if tag == "img"]
    assert all(s.startswith("review%20%26%20more/") for s in sources)
    assert all((page_uri.parent / "review & more" / s.split("/")[1]).is_file() for s in sources)
    assert report.notes == 0  # nothing was read, so nothing is missing
    with pytest.raises(ExportError, match=r"named \*\.html"):
        write_report(hostile, page=str(tmp_path / "report.txt"))


def _assert_painted(
    thumb: np.ndarray, base: np.ndarray, class_map: np.ndarray, colours: list[tuple[int, int, int]]
) -> None:
    """Background pixels are the base; region edges are the class colour; region insides are
    the colour blended over the base."""
    padded = np.pad(class_map, 1, mode="edge")
    inner = padded[1:-1, 1:-1]
    edge = (
        (padded[:-2, 1:-1] != inner)
        | (padded[2:, 1:-1] != inner)
        | (padded[1:-1, :-2] != inner)
        | (padded[1:-1, 2:] != inner)
    )
    colour = np.array(colours, np.float64)[class_map]
    background = class_map == 0
    assert (thumb[background] == base[background]).all()
    solid = edge & ~background
    assert (thumb[solid] == colour[solid]).all()
    inside = ~edge & ~background
    blended = (1 - ALPHA) * base[inside] + ALPHA * colour[inside]
    assert np.abs(thumb[inside].astype(np.float64) - blended).max() <= 1
    assert inside.any() and solid.any()


# A real run: the demo model over easy and ambiguous scenes, hostile and unicode names, one bad
# file, and one original deleted after labeling.

GONE = "gone.png"


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
    (source / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png after all")
    annotate(RunConfig(source=str(source), out=str(out), device="cpu"))
    (source / GONE).unlink()
    return source, out


def _expected_order(out: Path) -> list[str]:
    images = pq.read_table(out / "images").to_pylist()
    ok = [row for row in images if row["status"] == "ok"]
    assert len({row["review_priority"] for row in ok}) >= 4  # an order worth checking
    return [row["key"] for row in sorted(ok, key=lambda r: (-r["review_priority"], r["key"]))]


@pytest.mark.slow
def test_thumbnails_paint_the_labels_over_the_original(real_run: tuple[Path, Path]) -> None:
    source, out = real_run
    start = time.perf_counter()
    report = write_report(open_run(str(out)))
    print(f"report of {report.shown} images written in {time.perf_counter() - start:.2f} s")
    images = {row["key"]: row for row in pq.read_table(out / "images").to_pylist()}
    regions = pq.read_table(out / "records").to_pylist()
    colours = class_colours(5, 0)
    for key in ("easy-0.png", HOSTILE_KEY, GONE):
        row = images[key]
        class_map = np.zeros((row["height"], row["width"]), np.uint8)
        for region in (r for r in regions if r["image_id"] == row["image_id"]):
            rle = {"size": [row["height"], row["width"]], "counts": region["rle"].encode()}
            class_map[mask_utils.decode(rle).astype(bool)] = region["class_id"]
        thumb = np.asarray(Image.open(out / "exports" / "report" / f"{row['image_id']}.png"))
        if key == GONE:
            base = np.full((*class_map.shape, 3), NEUTRAL, np.uint8)
        else:
            base = np.asarray(Image.open(source / key).convert("RGB"))
        _assert_painted(thumb, base, class_map, colours)
    page = Page(Path(report.page).read_text())
    assert page.keys == _expected_order(out)
    (note,) = page.notes
    assert note.startswith(f"original not readable: {source / GONE}: cannot read")
    assert page.tables["failed"][1:] == [["broken.png", images["broken.png"]["error"]]]


@pytest.mark.slow
def test_the_command_writes_the_page_and_refuses_a_missing_run(
    real_run: tuple[Path, Path], tmp_path: Path
) -> None:
    _, out = real_run
    command = [sys.executable, "-c", "from flows.cli import app; app()", "report"]
    env = {**os.environ, "COLUMNS": "200"}
    page = tmp_path / "page.html"
    done = subprocess.run(
        [*command, str(out), "--out-file", str(page), "--no-source-images", "--limit", "3"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"wrote {page}" in done.stderr
    assert "3 of 8 labeled images shown, 1 failed" in done.stderr
    assert Page(page.read_text()).keys == _expected_order(out)[:3]
    missing = subprocess.run(
        [*command, str(tmp_path / "nothing")],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr
    assert "not a finished run folder" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail(
            "chromium is not installed: .ci/run installs Debian's chromium "
            "(apt-get install -y --no-install-recommends chromium fonts-noto-cjk)"
        )
    return subprocess.run(
        [
            exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            f"--user-data-dir={profile}", *args,
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
    assert loaded.keys == _expected_order(out)
    assert {HOSTILE_KEY, SCRIPT_KEY, "夜景/写真.png"} <= set(loaded.keys)
    assert_inert(loaded)
    assert loaded.title == TITLE  # the injected script would have set it to 'pwned'
    assert "pwned" not in " ".join(loaded.keys).replace(SCRIPT_KEY, "")
    assert '<img src="x"' not in dom and "onerror=" not in dom.replace(html.escape(IMG), "")
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
    assert loaded.keys == ORDER
    assert loaded.tables["failed"][1:] == [[FAILED_KEY, FAILED_REASON]]
