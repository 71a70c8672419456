"""XML laid out as ``xml.etree.ElementTree.indent`` lays it out, without its garbage.

``ET.indent`` makes a reference cycle on every call (a closure that calls itself), and exports
run with the cycle collector off (``pipeline.formats.export``): one call per image of a CVAT
export held hundreds of MB at 10^6 images until the export ended.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET


def indent(element: ET.Element, level: int = 0) -> None:
    """``ET.indent(element, level=level)``: two spaces a level, in place."""
    if not len(element):
        return
    inner = "\n" + "  " * (level + 1)
    if not element.text or not element.text.strip():
        element.text = inner
    for child in element:
        indent(child, level + 1)
        if not child.tail or not child.tail.strip():
            child.tail = inner
    if child.tail is not None and not child.tail.strip():  # the last child ends the line
        child.tail = inner[:-2]
