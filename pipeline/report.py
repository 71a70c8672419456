"""``report.html``: a static review page for a run, the most doubtful images first.

Labeled images are sorted by ``review_priority`` (the expected share of wrong pixels), highest
first, ties by key. Each shows a thumbnail with its class overlay (``pipeline.thumbnails``), its
review figures and its regions per class; then come the failed images and why, a legend with the
regions per class, and the run's facts from ``run.json``.

The page runs no script. Every string from data (keys, class names, errors, model names, paths)
is HTML-escaped, and a Content-Security-Policy allows nothing but inline CSS and images from the
page's own origin, so a missed escape still could not run a script or fetch from elsewhere.

Thumbnails are PNG files in a folder named like the page (``report.html`` -> ``report/``), named
by image id (never by key, so no name from data becomes a path) and linked relatively. The page
stays small however many images it shows, the browser loads thumbnails as they scroll into view,
and none is held in memory as a data: URI string; the price is that the page and its folder move
together. Only the ``limit`` most doubtful images (and the first ``limit`` failed ones) are shown,
with a note saying how many were left out: reviewers work from the top, and a page of thousands
of thumbnails is slow to write and to read. Thumbnails of a previous report stay in the folder.
"""

from __future__ import annotations

import hashlib
import html
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError

from pipeline.config import RunConfig
from pipeline.exporters.class_maps import class_colours
from pipeline.exporters.view import ExportError, RunView
from pipeline.run_folder import RunManifest
from pipeline.s3 import S3Settings
from pipeline.storage import Storage, storage_for
from pipeline.thumbnails import make_thumbnail

REPORT = "report.html"
DEFAULT_LIMIT = 500
THREADS = 4  # thumbnails at a time: reads overlap, and decoding and PNG coding free the GIL

CSP = (
    "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'"
)
_ID = re.compile(r"[0-9a-f]{16}")
_PAGE = re.compile(r"(?P<stem>[^/]+)\.html?", re.IGNORECASE)

STYLE = """
body{font:14px/1.4 system-ui,"Noto Sans","Noto Sans CJK SC",sans-serif;margin:1.5em;color:#222}
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.6em 0 .5em}
table{border-collapse:collapse}th,td{text-align:left;padding:.15em .8em .15em 0;vertical-align:top}
th{font-weight:600;color:#555}.figures th{font-weight:400;font-size:.85em}
.num{text-align:right;font-variant-numeric:tabular-nums}
.swatch{display:inline-block;width:.9em;height:.9em;border:1px solid #888;margin-right:.3em;
vertical-align:-.1em}
.note{color:#8a4b00}
ol.queue{padding-left:2.5em}
li.image{display:flex;gap:1em;align-items:flex-start;padding:.6em 0;border-top:1px solid #ddd}
li.image img,.nothumb{flex:none;background:#eee;border:1px solid #ccc;image-rendering:pixelated}
.nothumb{width:128px;height:96px}
.key{font-weight:600;margin:0 0 .3em;overflow-wrap:anywhere}
.classes{margin:.3em 0 0}.classes span.class{margin-right:.9em;white-space:nowrap}
.failed td{overflow-wrap:anywhere}
"""


@dataclass(frozen=True, slots=True)
class Report:
    page: str  # the HTML page's URI
    written: tuple[str, ...]  # the page, then every thumbnail written
    shown: int  # labeled images on the page
    labeled: int  # labeled images in the run
    failed: int  # failed images in the run
    notes: int  # images whose overlay is not on their original, or has no thumbnail


@dataclass(frozen=True, slots=True)
class _Entry:
    image: dict[str, Any]
    thumbnail: str | None  # the thumbnail's link from the page; None when none was made
    width: int
    height: int
    note: str | None


@dataclass(frozen=True, slots=True)
class _Storage:
    """What ``storage_for`` takes from a run config: the run's S3 settings (its endpoint)."""

    s3: S3Settings
    workers: int


def write_report(
    view: RunView,
    *,
    page: str | None = None,
    source_images: bool = True,
    limit: int = DEFAULT_LIMIT,
) -> Report:
    """Write the page (default ``exports/report.html`` in the run) and its thumbnails.

    ``source_images=False`` paints the overlays on grey without reading any original.
    """
    if limit < 1:
        raise ExportError(f"report: limit must be at least 1, got {limit}")
    if page is None:
        storage, page = view.layout.storage, view.layout.export(REPORT)
    else:
        storage = storage_for(page)
    name = page.rsplit("/", 1)[-1]
    match = _PAGE.fullmatch(name)
    if match is None:
        raise ExportError(f"{page}: the report must be a file named *.html")
    stem = match["stem"]
    folder = page[: len(page) - len(name)] + stem
    manifest = RunManifest.model_validate_json(view.layout.storage.read(view.layout.manifest))
    ok = pc.equal(view.images["status"], "ok")
    labeled = review_order(view.images.filter(ok))
    failed = view.images.filter(pc.invert(ok))
    shown = labeled.slice(0, limit).to_pylist()
    regions = _regions_of(view.regions, [row["image_id"] for row in shown])
    colours = class_colours(len(view.class_names), view.background)
    originals = _originals(shown, manifest) if source_images else {}
    max_pixels = _max_pixels(manifest)

    def render(image: dict[str, Any]) -> tuple[_Entry, str | None]:
        name = thumbnail_name(image["image_id"])
        reader = originals.get(image["uri"])
        try:
            thumb = make_thumbnail(
                image,
                regions.get(image["image_id"], []),
                colours,
                view.background,
                originals=reader,
                max_pixels=max_pixels,
            )
        except ValueError as exc:  # regions whose RLE does not fit the image: a broken record
            return _Entry(image, None, 0, 0, f"no thumbnail: {exc}"), None
        uri = storage.join(folder, f"{name}.png")
        storage.write_atomic(uri, thumb.png)
        note = thumb.note
        if source_images and reader is None:
            note = f"original not readable: no storage serves {image['uri']}"
        return _Entry(image, f"{quote(stem)}/{name}.png", thumb.width, thumb.height, note), uri

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        rendered = list(pool.map(render, shown))
    entries = [entry for entry, _ in rendered]
    text = _page_html(
        view,
        manifest,
        entries,
        labeled=labeled.num_rows,
        failed=failed.num_rows,
        failed_shown=failed.slice(0, limit).to_pylist(),
        source_images=source_images,
        class_counts={
            item["values"]: item["counts"]
            for item in pc.value_counts(view.regions["class_id"]).to_pylist()
        },
        colours=colours,
        regions=regions,
    )
    storage.write_atomic(page, text.encode())
    return Report(
        page=page,
        written=(page, *(uri for _, uri in rendered if uri is not None)),
        shown=len(shown),
        labeled=labeled.num_rows,
        failed=failed.num_rows,
        notes=sum(entry.note is not None for entry in entries),
    )


def review_order(images: pa.Table) -> pa.Table:
    """Highest ``review_priority`` first, ties by key; images without one (null, NaN) last."""
    priority = images["review_priority"]
    known = pc.if_else(pc.is_nan(priority), pa.scalar(None, priority.type), priority)
    keyed = images.append_column("_order", known)
    order = keyed.sort_by([("_order", "descending"), ("key", "ascending")])
    return order.drop_columns(["_order"])


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
    labeled: int,
    failed: int,
    failed_shown: Sequence[Mapping[str, Any]],
    source_images: bool,
    class_counts: Mapping[int, int],
    colours: Sequence[tuple[int, int, int]],
    regions: Mapping[str, Sequence[Mapping[str, Any]]],
) -> str:
    names = view.class_names
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n',
        '<meta name="referrer" content="no-referrer">\n',
        "<title>prelabel review</title>\n",
        f"<style>{STYLE}</style>\n</head>\n<body>\n",
        f"<h1>Review queue</h1>\n<p>{_e(view.layout.root)}</p>\n",
        _facts(view, manifest),
        _legend(view, class_counts, colours),
        '<h2 id="queue">Labeled images, most doubtful first</h2>\n',
    ]
    if labeled > len(entries):
        parts.append(
            f'<p class="note">Showing the {len(entries)} most doubtful of {labeled} labeled '
            "images; the rest are in the run's images table (column review_priority).</p>\n"
        )
    if not source_images:
        parts.append('<p class="note">Overlays on grey: originals were not read.</p>\n')
    parts.append('<ol class="queue">\n')
    for entry in entries:
        counts = Counter(row["class_id"] for row in regions.get(entry.image["image_id"], []))
        parts.append(_item(entry, counts, names, colours))
    parts.append("</ol>\n")
    parts.append(_failed(failed, failed_shown))
    parts.append("</body>\n</html>\n")
    return "".join(parts)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _share(value: float | None) -> str:
    return "&ndash;" if value is None or math.isnan(value) else f"{value:.1%}"


def _swatch(colour: tuple[int, int, int]) -> str:
    red, green, blue = colour
    return f'<span class="swatch" style="background:#{red:02x}{green:02x}{blue:02x}"></span>'


def _item(
    entry: _Entry,
    counts: Mapping[int, int],
    names: Sequence[str],
    colours: Sequence[tuple[int, int, int]],
) -> str:
    image = entry.image
    if entry.thumbnail is None:
        picture = '<div class="nothumb"></div>'
    else:
        picture = (
            f'<img src="{_e(entry.thumbnail)}" width="{entry.width}" height="{entry.height}" '
            f'alt="{_e(image["key"])} with its class overlay" loading="lazy">'
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
        for class_id, count in sorted(counts.items())
    )
    note = f'<p class="note">{_e(entry.note)}</p>' if entry.note else ""
    return (
        f'<li class="image" id="i-{thumbnail_name(image["image_id"])}">{picture}\n'
        f'<div><p class="key">{_e(image["key"])}</p>\n'
        f'<table class="figures"><tr>{head}</tr><tr>{values}</tr></table>\n'
        f'<p class="classes">{classes}</p>{note}</div></li>\n'
    )


def _facts(view: RunView, manifest: RunManifest) -> str:
    model = manifest.model
    facts = (
        ("run folder", view.layout.root),
        ("source", manifest.config.get("source", "-")),
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


def _regions_of(regions: pa.Table, image_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The region rows (``image_id``, ``class_id``, ``rle``) of these images only."""
    wanted = regions.select(["image_id", "class_id", "rle"])
    wanted = wanted.filter(pc.is_in(wanted["image_id"], value_set=pa.array(image_ids, pa.string())))
    out: dict[str, list[dict[str, Any]]] = {}
    for row in wanted.to_pylist():
        out.setdefault(row["image_id"], []).append(row)
    return out


def _originals(images: Sequence[Mapping[str, Any]], manifest: RunManifest) -> dict[str, Storage]:
    """The storage that reads each image's URI, one per scheme, with the run's S3 settings;
    URIs of a scheme no storage serves are left out."""
    try:
        s3 = S3Settings.model_validate(manifest.config.get("s3") or {})
    except ValidationError:
        s3 = S3Settings()
    config = _Storage(s3=s3, workers=THREADS)
    by_scheme: dict[str, Storage | None] = {}
    out: dict[str, Storage] = {}
    for image in images:
        uri = image["uri"]
        scheme = uri.split("://", 1)[0] if "://" in uri else ""
        if scheme not in by_scheme:
            try:
                by_scheme[scheme] = storage_for(uri, config)
            except ValueError:  # a scheme no storage serves
                by_scheme[scheme] = None
        storage = by_scheme[scheme]
        if storage is not None:
            out[uri] = storage
    return out


def _max_pixels(manifest: RunManifest) -> int:
    """The run's pixel limit: no original it labeled is over it."""
    value = manifest.config.get("max_pixels")
    default = RunConfig.model_fields["max_pixels"].default
    return value if isinstance(value, int) and value > 0 else int(default)
