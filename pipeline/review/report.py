"""``report.html``: a static review page for a run, the most doubtful images first.

Labeled images are sorted by ``review_priority`` (the expected share of wrong pixels), highest
first, ties by key. Each shows a thumbnail with its class overlay (``review.thumbnails``), its
review figures and its regions per class; then come the images listed apart (below), the failed
images and why, a legend with the regions per class, and the run's facts from ``run.json``.

Images whose whole class map is one class are listed apart, in key order, each with a badge and
the reason. The priority comes from the model's own confidence, and a model is surest exactly
where it sees nothing it knows: a photo painted all background at full confidence would rank
last, as the least doubtful, when it is the likeliest to miss whole objects.

Each thumbnail opens the image's own page: the image at up to 2048 pixels (``VIEW_SIDE``), its
overlay as a separate transparent layer that a checkbox hides to show the picture beneath, and a
link back to its place in the queue. Label Studio tasks are not linked: ``prelabel push`` keeps
no record of them in the run folder.

The pages run no script. Every string from data (keys, class names, errors, model names, paths)
is HTML-escaped, and a Content-Security-Policy allows nothing but inline CSS and images from the
page's own origin, so a missed escape still could not run a script or fetch from elsewhere.

Thumbnails, views and image pages are files in a folder named like the page (``report.html`` ->
``report/``), named by image id (never by key, so no name from data becomes a path) and linked
relatively: everything works offline, but the page and its folder move together. The page stays
small however many images it shows, the browser loads thumbnails as they scroll into view, and
none is held in memory as a data: URI string. Only the ``limit`` most doubtful images (and the
first ``limit`` images listed apart, and failed) are shown, with a note saying how many were left
out: reviewers work from the top, and a page of thousands of thumbnails is slow to write and to
read. Files of a previous report stay in the folder.
"""

from __future__ import annotations

import hashlib
import html
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.geometry.class_maps import class_colours
from pipeline.review.sync import push_record
from pipeline.review.thumbnails import review_pictures
from pipeline.run.manifest import RunManifest
from pipeline.run.tables import IMAGES_SCHEMA
from pipeline.run.view import ExportError, Part, RunView
from pipeline.storage import Storage, StorageError, scheme_of, storage_for

REPORT = "report.html"
DEFAULT_LIMIT = 500
THREADS = 4  # images at a time: reads overlap, and decoding and PNG coding free the GIL

CSP = (
    "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'"
)
_ID = re.compile(r"[0-9a-f]{16}")
_PAGE = re.compile(r"(?P<stem>[^/]+)\.html?", re.IGNORECASE)

STYLE = """
body{font:14px/1.4 system-ui,"Noto Sans","Noto Sans CJK SC",sans-serif;margin:1.5em;color:#222}
h1{font-size:1.5em;margin:0 0 .2em;overflow-wrap:anywhere}h2{font-size:1.15em;margin:1.6em 0 .5em}
a{color:#0b57a4}
table{border-collapse:collapse}th,td{text-align:left;padding:.15em .8em .15em 0;vertical-align:top}
th{font-weight:600;color:#555}.figures th{font-weight:400;font-size:.85em}
.num{text-align:right;font-variant-numeric:tabular-nums}
.swatch{display:inline-block;width:.9em;height:.9em;border:1px solid #888;margin-right:.3em;
vertical-align:-.1em}
.note{color:#8a4b00}
.badge{display:inline-block;background:#8a4b00;color:#fff;border-radius:.3em;padding:0 .4em;
margin-right:.4em;font-size:.85em;font-weight:600}
.flag{margin:0 0 .3em}
ol.queue{padding-left:2.5em}
li.image{display:flex;gap:1em;align-items:flex-start;padding:.6em 0;border-top:1px solid #ddd}
li.image img,.nothumb{display:block;flex:none;background:#eee;border:1px solid #ccc;
image-rendering:pixelated}
li.image a img{cursor:zoom-in}
.nothumb{width:128px;height:96px}
.key{font-weight:600;margin:0 0 .3em;overflow-wrap:anywhere}
.source{overflow-wrap:anywhere;color:#555}
.classes{margin:.3em 0 0}.classes span.class{margin-right:.9em;white-space:nowrap}
.failed td{overflow-wrap:anywhere}
.stack{position:relative;width:fit-content;margin-top:.5em;background:#eee}
.stack img{display:block;max-width:100%;height:auto}
.stack img.overlay{position:absolute;top:0;left:0;width:100%;height:100%}
#overlay:not(:checked)~.stack img.overlay{visibility:hidden}
"""
ONE_CLASS_WHY = (
    "The model put every pixel of these images in one class; for the background, that means it "
    "found nothing to label. Their review priority cannot be trusted: it measures the model's "
    "doubt, and a model is surest exactly where it sees nothing it knows, so in the queue they "
    "would come last, as the least doubtful, when they are the likeliest to miss whole objects. "
    "Check that each really holds nothing to label."
)


@dataclass(frozen=True, slots=True)
class Report:
    page: str  # the HTML page's URI
    written: tuple[str, ...]  # the page, then every file of its folder written
    shown: int  # labeled images on the page, ranked or listed apart
    labeled: int  # labeled images in the run
    one_class: int  # labeled images whose class map is one class: listed apart
    failed: int  # failed images in the run
    notes: int  # images whose overlay is not on their original, or has no pictures


@dataclass(frozen=True, slots=True)
class _Entry:
    image: dict[str, Any]
    name: str  # of its files in the folder
    thumbnail: tuple[int, int] | None  # its size; None when no pictures were made
    counts: Mapping[int, int]  # regions per class
    one_class: int | None  # the class of its whole class map, when it has only one
    note: str | None
    task: str | None = None  # its Label Studio task's address, when the run was pushed


def write_report(
    view: RunView,
    *,
    page: str | None = None,
    source_images: bool = True,
    limit: int = DEFAULT_LIMIT,
) -> Report:
    """Write the page (default ``exports/report.html`` in the run) and its folder: each shown
    image's thumbnail, large view, overlay layer and page.

    ``source_images=False`` paints the overlays on grey without reading any original.
    """
    if limit < 1:
        raise ExportError(f"report: limit must be at least 1, got {limit}")
    if page is None:
        storage, page = view.layout.storage, view.layout.export(REPORT)
    else:
        storage = storage_for(page)
    page_name = page.rsplit("/", 1)[-1]
    match = _PAGE.fullmatch(page_name)
    if match is None:
        raise ExportError(f"{page}: the report must be a file named *.html")
    stem = match["stem"]
    folder = page[: len(page) - len(page_name)] + stem
    manifest = RunManifest.model_validate_json(view.layout.storage.read(view.layout.manifest))
    chosen = _select(view, limit)
    one_class = chosen.one_class
    shown = [*chosen.ranked.to_pylist(), *chosen.alone.to_pylist()]
    regions = chosen.regions
    colours = class_colours(len(view.class_names), view.background)
    originals = _originals(shown, manifest) if source_images else {}
    max_pixels = manifest.config.max_pixels  # no original the run labeled is over it
    pushed = push_record(view)
    back = f"../{quote(page_name)}"

    def render(image: dict[str, Any]) -> tuple[_Entry, list[str]]:
        name = thumbnail_name(image["image_id"])
        rows = regions.get(image["image_id"], [])
        counts = Counter(row["class_id"] for row in rows)
        alone = one_class.get(image["image_id"])
        task = pushed.task_url(image["image_id"]) if pushed else None
        reader = originals.get(image["uri"])
        try:
            pictures = review_pictures(
                image, rows, colours, view.background, originals=reader, max_pixels=max_pixels
            )
        except ValueError as exc:  # regions whose RLE does not fit the image: a broken record
            return _Entry(image, name, None, counts, alone, f"no thumbnail: {exc}", task), []
        note = pictures.note
        if source_images and reader is None:
            note = f"original not readable: no storage serves {image['uri']}"
        entry = _Entry(image, name, pictures.thumbnail_size, counts, alone, note, task)
        files = {
            f"{name}.png": pictures.thumbnail,
            f"{name}.jpg": pictures.view,
            f"{name}.overlay.png": pictures.overlay,
            f"{name}.html": _view_html(
                entry, pictures.view_size, view.class_names, colours, back
            ).encode(),
        }
        written = [storage.join(folder, file) for file in files]
        for uri, data in zip(written, files.values(), strict=True):
            storage.write_atomic(uri, data)
        return entry, written

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        rendered = list(pool.map(render, shown))
    entries = [entry for entry, _ in rendered]
    text = _page_html(
        view,
        manifest,
        entries,
        folder=quote(stem),
        ranked=chosen.ranked_count,
        one_class=chosen.one_class_count,
        failed=chosen.failed_count,
        failed_shown=chosen.failed.to_pylist(),
        source_images=source_images,
        class_counts=chosen.class_counts,
        colours=colours,
    )
    storage.write_atomic(page, text.encode())
    return Report(
        page=page,
        written=(page, *(uri for _, files in rendered for uri in files)),
        shown=len(shown),
        labeled=chosen.labeled,
        one_class=chosen.one_class_count,
        failed=chosen.failed_count,
        notes=sum(entry.note is not None for entry in entries),
    )


def review_order(images: pa.Table) -> pa.Table:
    """Highest ``review_priority`` first, ties by key; images without one (null, NaN) last."""
    priority = images["review_priority"]
    known = pc.if_else(pc.is_nan(priority), pa.scalar(None, priority.type), priority)
    keyed = images.append_column("_order", known)
    order = keyed.sort_by([("_order", "descending"), ("key", "ascending")])
    return order.drop_columns(["_order"])


def one_class_images(images: pa.Table, regions: pa.Table, background: int | None) -> dict[str, int]:
    """Image id -> class, for the images whose class map, as the regions paint it back
    (``class_map_of``), is that one class on every pixel: regions of one class, if any, and
    where they do not cover the image, that class is also what is painted there."""
    uncovered = background or 0  # what class_map_of paints where no region is
    drawn = {
        row["image_id"]: row
        for row in regions.group_by("image_id")
        .aggregate([("class_id", "min"), ("class_id", "max"), ("area", "sum")])
        .to_pylist()
    }
    out = {}
    for image in images.select(["image_id", "width", "height"]).to_pylist():
        found = drawn.get(image["image_id"])
        if found is None:
            out[image["image_id"]] = uncovered
        elif found["class_id_min"] == found["class_id_max"] and (
            found["class_id_min"] == uncovered
            or found["area_sum"] >= image["width"] * image["height"]
        ):
            out[image["image_id"]] = found["class_id_min"]
    return out


def thumbnail_name(image_id: str) -> str:
    """The image id when it is one (16 hex digits), else a hash of it: never a name from data."""
    if _ID.fullmatch(image_id):
        return image_id
    return hashlib.sha256(image_id.encode()).hexdigest()[:16]


def _page_html(
    view: RunView,
    manifest: RunManifest,
    entries: Sequence[_Entry],
    *,
    folder: str,
    ranked: int,
    one_class: int,
    failed: int,
    failed_shown: Sequence[Mapping[str, Any]],
    source_images: bool,
    class_counts: Mapping[int, int],
    colours: Sequence[tuple[int, int, int]],
) -> str:
    names = view.class_names
    queue = [entry for entry in entries if entry.one_class is None]
    apart = [entry for entry in entries if entry.one_class is not None]
    parts = [
        _head("prelabel review"),
        f"<h1>Review queue</h1>\n<p>{_e(view.layout.root)}</p>\n",
        _facts(view, manifest),
        _legend(view, class_counts, colours),
        '<h2 id="queue">Labeled images, most doubtful first</h2>\n',
        "<p>Open an image for its full-size view, where the overlay can be hidden.</p>\n",
    ]
    if ranked > len(queue):
        parts.append(
            f'<p class="note">Showing the {len(queue)} most doubtful of {ranked} ranked '
            "images; the rest are in the run's images table (column review_priority).</p>\n"
        )
    if one_class:
        parts.append(
            f'<p class="note"><a href="#one-class">{_images(one_class)} one class over the '
            "whole image</a>, listed apart below: their confidence cannot rank them.</p>\n"
        )
    if not source_images:
        parts.append('<p class="note">Overlays on grey: originals were not read.</p>\n')
    parts.append('<ol class="queue">\n')
    parts.extend(_item(entry, names, colours, folder) for entry in queue)
    parts.append("</ol>\n")
    if one_class:
        parts.append(
            f'<h2 id="one-class">One class over the whole image ({one_class})</h2>\n'
            f'<p class="why">{ONE_CLASS_WHY}</p>\n'
        )
        if one_class > len(apart):
            parts.append(f'<p class="note">Showing the first {len(apart)}, by key.</p>\n')
        parts.append('<ol class="queue">\n')
        parts.extend(_item(entry, names, colours, folder) for entry in apart)
        parts.append("</ol>\n")
    parts.append(_failed(failed, failed_shown))
    parts.append("</body>\n</html>\n")
    return "".join(parts)


def _head(title: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{_e(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
    )


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _images(count: int) -> str:
    return "1 image is" if count == 1 else f"{count} images are"


def _share(value: float | None) -> str:
    return "&ndash;" if value is None or math.isnan(value) else f"{value:.1%}"


def _swatch(colour: tuple[int, int, int]) -> str:
    red, green, blue = colour
    return f'<span class="swatch" style="background:#{red:02x}{green:02x}{blue:02x}"></span>'


def _item(
    entry: _Entry, names: Sequence[str], colours: Sequence[tuple[int, int, int]], folder: str
) -> str:
    """A queue item: the thumbnail and key, both opening the image's page, and its details."""
    key = _e(entry.image["key"])
    if entry.thumbnail is None:
        picture, title = '<div class="nothumb"></div>', key
    else:
        width, height = entry.thumbnail
        href = _e(f"{folder}/{entry.name}.html")
        picture = (
            f'<a href="{href}" title="Open full size"><img src="{_e(folder)}/{entry.name}.png" '
            f'width="{width}" height="{height}" alt="{key} with its class overlay" '
            'loading="lazy"></a>'
        )
        title = f'<a href="{href}">{key}</a>'
    return (
        f'<li class="image" id="i-{entry.name}">{picture}\n'
        f'<div><p class="key">{title}</p>\n{_details(entry, names, colours)}</div></li>\n'
    )


def _details(entry: _Entry, names: Sequence[str], colours: Sequence[tuple[int, int, int]]) -> str:
    """Why it is listed apart (when it is), its review figures, regions per class and note."""
    image = entry.image
    flag = ""
    if entry.one_class is not None:
        flag = (
            '<p class="flag"><span class="badge">one class</span>Listed apart: every pixel is '
            f"&ldquo;{_e(names[entry.one_class])}&rdquo; (mean confidence "
            f"{_share(image['mean_confidence'])}). Confidence cannot tell a miss the model is "
            "sure of from an image with nothing to label: check which this is.</p>\n"
        )
    figures = (
        ("priority", _share(image["review_priority"])),
        ("mean confidence", _share(image["mean_confidence"])),
        ("low confidence", _share(image["low_confidence_share"])),
        ("boundary uncertainty", _share(image["boundary_uncertainty"])),
        ("fragments", _e(image["fragments"])),
        ("regions", _e(image["region_count"])),
        ("size", f"{image['width']}&times;{image['height']} px"),
    )
    head = "".join(f"<th>{name}</th>" for name, _ in figures)
    values = "".join(f'<td class="num">{value}</td>' for _, value in figures)
    classes = "".join(
        f'<span class="class">{_swatch(colours[class_id])}{_e(names[class_id])} {count}</span>'
        for class_id, count in sorted(entry.counts.items())
    )
    note = f'<p class="note">{_e(entry.note)}</p>' if entry.note else ""
    task = (
        f'<p class="task"><a href="{_e(entry.task)}">Open its Label Studio task</a></p>'
        if entry.task
        else ""
    )
    return (
        f'{flag}<table class="figures"><tr>{head}</tr><tr>{values}</tr></table>\n'
        f'<p class="classes">{classes}</p>{note}{task}'
    )


def _view_html(
    entry: _Entry,
    size: tuple[int, int],
    names: Sequence[str],
    colours: Sequence[tuple[int, int, int]],
    back: str,
) -> str:
    """An image's own page, in the report's folder: its large view under its overlay layer
    (a checkbox hides the layer, no script), its details and the way back to the queue."""
    image, name = entry.image, entry.name
    width, height = size
    key = _e(image["key"])
    shrunk = ""
    if size != (image["width"], image["height"]):
        shrunk = (
            f'<p class="note">Shown at {width}&times;{height} px; the original is '
            f"{image['width']}&times;{image['height']} px.</p>\n"
        )
    return _head(f"{image['key']} - prelabel review") + (
        f'<p class="nav"><a href="{_e(back)}#i-{name}">Back to the review queue</a></p>\n'
        f'<h1 class="key">{key}</h1>\n<p class="source">{_e(image["uri"])}</p>\n'
        f"{_details(entry, names, colours)}\n{shrunk}"
        '<input type="checkbox" id="overlay" checked> '
        '<label for="overlay">Show the class overlay</label>\n'
        f'<div class="stack"><img class="view" src="{name}.jpg" width="{width}" '
        f'height="{height}" alt="{key}"><img class="overlay" src="{name}.overlay.png" '
        f'width="{width}" height="{height}" alt="its class overlay"></div>\n'
        "</body>\n</html>\n"
    )


def _facts(view: RunView, manifest: RunManifest) -> str:
    model = manifest.model
    facts = (
        ("run folder", view.layout.root),
        ("source", manifest.config.source),
        ("model", f"{model.ref} ({model.arch}, {model.source})"),
        ("model version", model.model_version),
        ("classes", len(model.class_names)),
        ("prelabel version", manifest.prelabel_version),
        ("started", _when(manifest.started_at)),
        ("finished", _when(manifest.finished_at)),
        ("images", f"{manifest.images} ({manifest.images_failed} failed)"),
        ("regions", manifest.regions),
    )
    rows = "".join(f"<tr><th>{k}</th><td>{_e(v)}</td></tr>\n" for k, v in facts)
    return f'<h2 id="run">Run</h2>\n<table class="facts">\n{rows}</table>\n'


def _when(moment: datetime) -> str:
    return moment.isoformat(sep=" ", timespec="seconds")


def _legend(
    view: RunView, counts: Mapping[int, int], colours: Sequence[tuple[int, int, int]]
) -> str:
    rows = []
    for class_id, name in enumerate(view.class_names):
        regions = "not painted" if class_id == view.background else str(counts.get(class_id, 0))
        rows.append(
            f"<tr><td>{_swatch(colours[class_id])}{_e(name)}</td>"
            f'<td class="num">{regions}</td></tr>\n'
        )
    return (
        '<h2 id="classes">Classes</h2>\n<table class="legend">\n'
        "<tr><th>class</th><th>regions</th></tr>\n" + "".join(rows) + "</table>\n"
    )


def _failed(count: int, shown: Sequence[Mapping[str, Any]]) -> str:
    head = f'<h2 id="failed">Failed images ({count})</h2>\n'
    if not shown:
        return head + "<p>None.</p>\n"
    rows = "".join(
        f"<tr><td>{_e(row['key'])}</td><td>{_e(row['error'] or 'no reason recorded')}</td></tr>\n"
        for row in shown
    )
    more = f'<p class="note">Showing the first {len(shown)}.</p>\n' if count > len(shown) else ""
    return (
        f'{head}{more}<table class="failed">\n<tr><th>image</th><th>why</th></tr>\n{rows}</table>\n'
    )


@dataclass
class _Selection:
    """What the page shows of a run, chosen shard by shard: at most ``limit`` images of each
    list and their regions are held, whatever the size of the run."""

    limit: int
    ranked: pa.Table  # the most doubtful labeled images, in review order
    alone: pa.Table  # the first one-class images, in key order
    failed: pa.Table  # the first failed images, in key order
    one_class: dict[str, int] = field(default_factory=dict)  # of those shown
    regions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # of those shown
    labeled: int = 0
    ranked_count: int = 0
    one_class_count: int = 0
    failed_count: int = 0
    class_counts: dict[int, int] = field(default_factory=dict)

    def add(self, part: Part, background: int | None) -> None:
        images, ok = part.images, pc.equal(part.images["status"], "ok")
        labeled = images.filter(ok)
        alone = one_class_images(labeled, part.regions, background)
        apart = pc.is_in(labeled["image_id"], value_set=pa.array(list(alone), pa.string()))
        ranked = labeled.filter(pc.invert(apart))
        self.labeled += labeled.num_rows
        self.ranked_count += ranked.num_rows
        self.one_class_count += len(alone)
        self.failed_count += images.num_rows - labeled.num_rows
        for item in pc.value_counts(part.regions["class_id"]).to_pylist():
            class_id, count = item["values"], item["counts"]
            self.class_counts[class_id] = self.class_counts.get(class_id, 0) + count
        self.ranked = review_order(pa.concat_tables([self.ranked, ranked])).slice(0, self.limit)
        self.alone = pa.concat_tables([self.alone, labeled.filter(apart)]).slice(0, self.limit)
        self.failed = pa.concat_tables([self.failed, images.filter(pc.invert(ok))]).slice(
            0, self.limit
        )
        shown = {*self.ranked["image_id"].to_pylist(), *self.alone["image_id"].to_pylist()}
        self.one_class = {i: c for i, c in {**self.one_class, **alone}.items() if i in shown}
        kept = {i: rows for i, rows in self.regions.items() if i in shown}
        mine = pc.is_in(part.regions["image_id"], value_set=pa.array(sorted(shown), pa.string()))
        for row in part.regions.filter(mine).select(["image_id", "class_id", "rle"]).to_pylist():
            kept.setdefault(row["image_id"], []).append(row)
        self.regions = kept


def _select(view: RunView, limit: int) -> _Selection:
    empty = IMAGES_SCHEMA.empty_table()
    chosen = _Selection(limit, empty, empty, empty)
    for part in view.parts(regions=("image_id", "class_id", "rle", "area")):
        chosen.add(part, view.background)
    return chosen


def _originals(images: Sequence[Mapping[str, Any]], manifest: RunManifest) -> dict[str, Storage]:
    """The storage that reads each image's URI, one per scheme, with the run's S3 settings;
    URIs of a scheme no storage serves are left out."""
    by_scheme: dict[str, Storage | None] = {}
    out: dict[str, Storage] = {}
    for image in images:
        uri = image["uri"]
        scheme = scheme_of(uri)
        if scheme not in by_scheme:
            try:
                by_scheme[scheme] = storage_for(uri, manifest.config)
            except StorageError:  # a scheme no storage serves
                by_scheme[scheme] = None
        storage = by_scheme[scheme]
        if storage is not None:
            out[uri] = storage
    return out
