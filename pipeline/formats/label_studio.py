"""Label Studio tasks with pre-annotations, and the labeling config that matches them.

One task per labeled image, holding one prediction. Its ``score`` is the image's mean
confidence, so Label Studio's sort by prediction score puts the most doubtful images first
(a review priority may replace it later). Coordinates are percent of the oriented image,
the size a browser shows once EXIF is applied.

Label Studio polygons cannot have holes, so with ``ls_regions="polygon"`` a region with
holes, or one the fidelity gate sent to RLE, is written as a brush mask instead: no region is
dropped or filled in. Brush masks are in Label Studio's own RLE, not COCO's. Result ids
derive from region ids, ``<region_id>`` for a brush mask and ``<region_id>-<part>`` for each
polygon part, so a later pull can match reviewed results to regions; the task's ``data``
carries the image id and key for the same reason.

A task's image is the source URI unless ``image_url_prefix`` (prefix + quoted key) or
``local_files_root`` is given: then it is the URL Label Studio's local files storage writes
and serves, ``/data/local-files/?d=`` + the path relative to its LOCAL_FILES_DOCUMENT_ROOT.
A local source URI is an absolute path only a browser on this machine can open.
"""

from __future__ import annotations

import itertools
import posixpath
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Sequence
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

import numpy as np
import numpy.typing as npt

from pipeline.formats.streams import JsonArray
from pipeline.formats.xml_layout import indent
from pipeline.geometry.class_maps import class_colours
from pipeline.geometry.rle import region_crop, run_lengths_from_crop
from pipeline.run.view import ExportError, ExportOptions, Part, RunView
from pipeline.storage import NotFoundError, Storage

__all__ = [
    "brush_rle",
    "check_image_urls",
    "decode_brush_rle",
    "export_label_studio",
    "label_config",
    "label_studio_tasks",
]

IMAGE, POLYGON, BRUSH = "image", "polygon", "brush"  # tag names in the config and results
# Where Label Studio serves a file under LOCAL_FILES_DOCUMENT_ROOT; what follows is its path
# relative to that root, quoted (its LocalFilesImportStorage.get_data and localfiles_data).
LOCAL_FILES_URL = "/data/local-files/?d="

# Label Studio's brush RLE (thi.ng rle-pack): 8-bit words and four run-length field widths.
_WORD_BITS = 8
_RUN_BITS = np.array([3, 4, 8, 16])
_RUN_LIMITS = 1 << _RUN_BITS  # the longest run each width holds (the field stores length - 1)


def export_label_studio(view: RunView, options: ExportOptions) -> tuple[str, ...]:
    config_uri = view.layout.export("label-config.xml")
    tasks = (task for part in view.parts() for task in tasks_of_part(part, view, options))
    if options.ls_split is None:
        tasks_uri = view.layout.export("label-studio.json")
        _write_array(view.layout.storage, tasks_uri, tasks)
        written = [tasks_uri]
    else:
        written = _split_tasks(view, tasks, options.ls_split)
    config = label_config(view.class_names, view.background)
    view.layout.storage.write_atomic(config_uri, config.encode())
    return (*written, config_uri)


_SPLIT_FOLDER = "label-studio"
_SPLIT_FILE = re.compile(r"tasks-\d{5,}\.json")


def _split_tasks(view: RunView, tasks: Iterator[dict[str, Any]], size: int) -> list[str]:
    """Tasks in key order, ``size`` to a file (``label-studio/tasks-00000.json``, ...): each
    file a JSON array Label Studio imports on its own. Files of an earlier export beyond the
    last one written now are removed, so the folder holds this export only."""
    storage = view.layout.storage
    folder = view.layout.export(_SPLIT_FOLDER)
    written: list[str] = []
    while True:
        head = list(itertools.islice(tasks, 1))
        if written and not head:
            break
        uri = storage.join(folder, f"tasks-{len(written):05d}.json")
        _write_array(storage, uri, itertools.chain(head, itertools.islice(tasks, size - 1)))
        written.append(uri)
    try:
        earlier = [item.uri for item in storage.list(folder) if _SPLIT_FILE.fullmatch(item.key)]
    except NotFoundError:
        earlier = []
    for uri in sorted(set(earlier) - set(written)):
        storage.delete(uri)
    return written


def _write_array(storage: Storage, uri: str, items: Iterable[Any]) -> None:
    """One task built and written at a time: memory holds one image's results, not a file's."""
    with storage.write_stream(uri) as out:
        array = JsonArray(out)
        for item in items:
            array.append(item)
        array.close()


def label_studio_tasks(view: RunView, options: ExportOptions) -> list[dict[str, Any]]:
    """Tasks in key order; each prediction's score is the image's mean confidence, lower
    meaning more doubtful, so sorting tasks by it ascending reviews the worst first."""
    return [task for part in view.parts() for task in tasks_of_part(part, view, options)]


def tasks_of_part(part: Part, view: RunView, options: ExportOptions) -> Iterator[dict[str, Any]]:
    regions = part.regions_of()
    for image in part.ok_images():
        results = [
            result
            for region in regions.get(image["image_id"], [])
            for result in _results(region, image, view.class_names, options)
        ]
        yield {
            "data": {
                IMAGE: _image_ref(image, options),
                "prelabel_image_id": image["image_id"],
                "key": image["key"],
            },
            "predictions": [
                {
                    "model_version": view.model.model_version,
                    "score": _rounded(image["mean_confidence"]),
                    "result": results,
                }
            ],
        }


def label_config(class_names: Sequence[str], background: int | None) -> str:
    """Both a polygon and a brush control over one image, whatever ``ls_regions`` is: polygon
    exports fall back to brush masks, and one project config then takes either export."""
    colours = class_colours(len(class_names), background)
    view = ET.Element("View")
    ET.SubElement(view, "Image", name=IMAGE, value=f"${IMAGE}", zoom="true")
    for tag, name in (("PolygonLabels", POLYGON), ("BrushLabels", BRUSH)):
        control = ET.SubElement(view, tag, name=name, toName=IMAGE)
        for class_id, class_name in enumerate(class_names):
            if class_id != background:
                colour = "#{:02x}{:02x}{:02x}".format(*colours[class_id])
                ET.SubElement(control, "Label", value=class_name, background=colour)
    indent(view)
    return ET.tostring(view, encoding="unicode") + "\n"


def brush_rle(
    crop: npt.NDArray[np.bool_], *, x0: int, y0: int, height: int, width: int
) -> list[int]:
    """Label Studio's brush RLE of a crop placed at (x0, y0) on a height x width image.

    The values are the image's RGBA bytes in row-major order, all four 255 on the mask. The
    stream is big-endian bit fields: the value count (32 bits), word size - 1 (5), the four
    run-length widths - 1 (4 each); then tokens of a repeat flag (1), an index into the
    widths (2), run length - 1 (that width) and the repeated word (8). Mask runs are whole
    pixels, 4 bytes or more, so every token here is a repeat; runs over 2**16 bytes are split.
    """
    count = height * width * 4
    if count >= 1 << 32:
        raise ValueError(f"a {width}x{height} image is too large for Label Studio's brush RLE")
    # Row-major runs of the image are column-major runs of its transpose.
    runs = 4 * run_lengths_from_crop(crop.T, x0=y0, y0=x0, height=width, width=height)
    words = np.where(np.arange(len(runs)) % 2 == 1, 255, 0)[runs > 0]
    runs = runs[runs > 0]
    pieces = -(-runs // _RUN_LIMITS[-1])
    run_of = np.repeat(np.arange(len(runs)), pieces)
    piece = np.arange(len(run_of)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    lengths = np.minimum(_RUN_LIMITS[-1], runs[run_of] - piece * _RUN_LIMITS[-1])
    size = np.searchsorted(_RUN_LIMITS, lengths)
    bits = _RUN_BITS[size]
    tokens = (
        (1 << (bits + 2 + _WORD_BITS))
        | (size << (bits + _WORD_BITS))
        | ((lengths - 1) << _WORD_BITS)
        | words[run_of]
    )
    header = [count, _WORD_BITS - 1, *(_RUN_BITS - 1)]
    fields = np.concatenate((header, tokens)).astype(">u4")
    widths = np.concatenate(([32, 5, 4, 4, 4, 4], bits + 3 + _WORD_BITS))
    # Each field's bits, most significant first; keep the last `width` of its 32.
    matrix = np.unpackbits(fields.view(np.uint8).reshape(-1, 4), axis=1)
    keep = np.arange(32) >= 32 - widths[:, None]
    packed: list[int] = np.packbits(matrix[keep]).tolist()
    return packed


def decode_brush_rle(rle: Sequence[int]) -> npt.NDArray[np.uint8]:
    """The byte values that Label Studio's brush RLE holds (an image's RGBA, row-major).

    The inverse of ``brush_rle``, plus the literal tokens Label Studio's editor also writes:
    a repeat flag 0, the run-length field, then that many words.
    """
    bits = np.unpackbits(np.asarray(rle, np.uint8)).astype(np.int64)
    position = 0

    def read(size: int, count: int = 1) -> npt.NDArray[np.int64]:
        nonlocal position
        end = position + size * count
        if end > len(bits):
            raise ValueError("brush RLE ends before its last value")
        fields = bits[position:end].reshape(count, size)
        position = end
        return fields @ (1 << np.arange(size - 1, -1, -1, dtype=np.int64))

    count = int(read(32)[0])
    word = int(read(5)[0]) + 1
    if word != 8:
        raise ValueError(f"brush RLE of {word}-bit words is not an RGBA mask")
    run_bits = read(4, 4) + 1
    out = np.zeros(count, np.uint8)
    at = 0
    while at < count:
        repeat = int(read(1)[0])
        length = int(read(int(run_bits[read(2)[0]]))[0]) + 1
        if at + length > count:
            raise ValueError("brush RLE holds more values than its header says")
        out[at : at + length] = read(word)[0] if repeat else read(word, length)
        at += length
    return out


# --- push ------------------------------------------------------------------------------------


def _results(
    region: dict[str, Any],
    image: dict[str, Any],
    class_names: Sequence[str],
    options: ExportOptions,
) -> list[dict[str, Any]]:
    width, height = image["width"], image["height"]
    label = class_names[region["class_id"]]
    common = {
        "to_name": IMAGE,
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "score": _rounded(region["score"]),
    }
    polygons = region["polygons"]
    if (
        options.ls_regions == "polygon"
        and region["geometry"] == "polygon"
        and all(len(polygon) == 1 for polygon in polygons)
    ):
        return [
            {
                "id": f"{region['region_id']}-{part}",
                "from_name": POLYGON,
                "type": "polygonlabels",
                "value": {"points": _percent(exterior, width, height), "polygonlabels": [label]},
                **common,
            }
            for part, (exterior,) in enumerate(polygons)
        ]
    x0, y0, crop = region_crop(region["rle"], height=height, width=width)
    rle = brush_rle(crop, x0=x0, y0=y0, height=height, width=width)
    return [
        {
            "id": region["region_id"],
            "from_name": BRUSH,
            "type": "brushlabels",
            "value": {"format": "rle", "rle": rle, "brushlabels": [label]},
            **common,
        }
    ]


def _percent(ring: Sequence[float], width: int, height: int) -> list[list[float]]:
    """Pixel-corner coordinates to percent of the image; 4 decimals keep 0.01 px at 20k px."""
    points = np.asarray(ring, np.float64).reshape(-1, 2) * 100 / (width, height)
    rounded: list[list[float]] = np.round(points, 4).tolist()
    return rounded


def _rounded(score: float | None) -> float | None:
    return None if score is None else round(score, 4)


def check_image_urls(view: RunView, options: ExportOptions) -> str | None:
    """Every task's image URL, made before any export is written, so that an image outside
    ``local_files_root`` is refused (``ExportError``) with nothing half-done. Returns a line
    for the user where the tasks would point at local paths, which only this machine opens."""
    first, count = None, 0
    for part in view.parts(regions=None):
        for image in part.ok_images():
            ref = _image_ref(image, options)  # raises for an image outside local_files_root
            if "://" not in ref:
                first, count = first or ref, count + 1
    chosen = options.image_url_prefix is not None or options.local_files_root is not None
    if first is None or chosen:
        return None
    return (
        f"label-studio tasks point at absolute local paths ({first}"
        + (f" and {count - 1} more" if count > 1 else "")
        + ") that only a browser on this machine can open; give --image-url-prefix URL "
        "for images served elsewhere, or --local-files-root DIR for Label Studio's local files"
    )


def _image_ref(image: dict[str, Any], options: ExportOptions) -> str:
    uri = str(image["uri"])
    if options.local_files_root is not None:
        return _local_files_url(uri, options.local_files_root)
    if options.image_url_prefix is None:
        return uri
    key = "/".join(quote(segment, safe="") for segment in str(image["key"]).split("/"))
    return options.image_url_prefix + key


def _local_files_url(uri: str, root: str) -> str:
    """Compared as paths, as Label Studio does (no symbolic link is followed)."""
    try:
        relative = PurePosixPath(posixpath.normpath(uri)).relative_to(root)
    except ValueError:
        raise ExportError(
            f"--local-files-root {root}: image {uri} is not under it; give the folder Label "
            "Studio serves local files from (LOCAL_FILES_DOCUMENT_ROOT), one holding every image"
        ) from None
    return LOCAL_FILES_URL + quote(relative.as_posix())
