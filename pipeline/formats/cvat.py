"""CVAT for images 1.1 XML, the file CVAT's "Upload annotations" takes for an image task.

A region the fidelity gate kept as polygons, none with holes, becomes one ``<polygon>`` per part
(parts of one region share a ``group_id``); anything else becomes a ``<mask>``, CVAT's brush
shape. Its ``rle`` is run lengths over the region's tight box, row by row, starting with a run
of zeros that may be empty, and ``left``/``top``/``width``/``height`` is that box: what CVAT's own
exporter writes (cvat-ai/cvat ``cvat/apps/dataset_manager/formats/cvat.py``, issue #6487).

Polygon points are written as stored, in pixel-corner coordinates: CVAT passes COCO polygons
through unchanged and its quality reports rasterize polygons with pycocotools beside masks.
Labels have type ``any``, since one class may carry both shapes; the background class is left
out, as in COCO. Text XML 1.0 cannot hold (control characters in a key) becomes U+FFFD.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from itertools import chain, count

import numpy as np
import numpy.typing as npt

from pipeline.formats.xml_layout import indent
from pipeline.geometry.class_maps import class_colours
from pipeline.geometry.rle import region_crop
from pipeline.run.view import ExportOptions, Part, RunView

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def export_cvat(view: RunView, options: ExportOptions) -> tuple[str, ...]:
    """Written element by element, indented as ``ET.indent`` indents the whole tree."""
    uri = view.layout.export("cvat.xml")
    with view.layout.storage.write_stream(uri) as out:
        out.write(b"<?xml version='1.0' encoding='utf-8'?>\n<annotations>")
        frames = count()
        elements = chain(
            _header(view),
            (e for part in view.parts() for e in _image_elements(part, view, frames)),
        )
        for element in elements:
            indent(element, level=1)
            out.write(b"\n  " + ET.tostring(element, encoding="unicode").encode())
        out.write(b"\n</annotations>")
    return (uri,)


def _header(view: RunView) -> list[ET.Element]:
    version = ET.Element("version")
    version.text = "1.1"
    meta = ET.Element("meta")
    task = ET.SubElement(meta, "task")
    ET.SubElement(task, "name").text = xml_text(f"prelabel {view.model.model_version}")
    ET.SubElement(task, "size").text = str(view.rows.labeled)
    ET.SubElement(task, "mode").text = "annotation"
    labels = ET.SubElement(task, "labels")
    colours = class_colours(len(view.class_names), view.background)
    for class_id, name in enumerate(view.class_names):
        if class_id == view.background:
            continue
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = xml_text(name)
        ET.SubElement(label, "color").text = "#{:02x}{:02x}{:02x}".format(*colours[class_id])
        ET.SubElement(label, "type").text = "any"
        ET.SubElement(label, "attributes")
    return [version, meta]


def _image_elements(part: Part, view: RunView, frames: Iterator[int]) -> Iterator[ET.Element]:
    """Frame ids count the run's labeled images in key order, as CVAT numbers a task's."""
    images = part.ok_images()
    regions = part.regions_of()
    for image in images:
        height, width = image["height"], image["width"]
        element = ET.Element(
            "image",
            {
                "id": str(next(frames)),
                "name": xml_text(image["key"]),
                "width": str(width),
                "height": str(height),
            },
        )
        for group, region in enumerate(regions.get(image["image_id"], []), start=1):
            name = xml_text(view.class_names[region["class_id"]])
            polygons = region["polygons"]
            if region["geometry"] == "polygon" and all(len(p) == 1 for p in polygons):
                grouped = {"group_id": str(group)} if len(polygons) > 1 else {}
                for (ring,) in polygons:
                    ET.SubElement(element, "polygon", polygon_shape(name, ring) | grouped)
            else:
                crop = region_crop(region["rle"], height=height, width=width)
                ET.SubElement(element, "mask", mask_shape(name, *crop))
        yield element


def polygon_shape(label: str, ring: Sequence[float]) -> dict[str, str]:
    """Points ``x0,y0;x1,y1;...`` with two decimals, as CVAT writes them."""
    points = ";".join(f"{x:.2f},{y:.2f}" for x, y in zip(ring[::2], ring[1::2], strict=True))
    return {"label": label, "source": "auto", "occluded": "0", "points": points, "z_order": "0"}


def mask_shape(label: str, left: int, top: int, crop: npt.NDArray[np.bool_]) -> dict[str, str]:
    return {
        "label": label,
        "source": "auto",
        "occluded": "0",
        "rle": ", ".join(map(str, cvat_rle(crop))),
        "left": str(left),
        "top": str(top),
        "width": str(crop.shape[1]),
        "height": str(crop.shape[0]),
        "z_order": "0",
    }


def cvat_rle(crop: npt.NDArray[np.bool_]) -> list[int]:
    """CVAT's mask runs: over the crop row by row, alternating, starting with zeros."""
    flat = crop.ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs: list[int] = np.diff(np.concatenate(([0], changes, [flat.size]))).tolist()
    return [0, *runs] if flat[0] else runs


def xml_text(text: str) -> str:
    """``text`` with what XML 1.0 cannot hold replaced; ElementTree escapes the rest."""
    return _NOT_XML.sub("\ufffd", text)
