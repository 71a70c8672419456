"""Decode brush RLEs with Label Studio's own converter, in the reference venv (not the project's).

Usage: ``decode_brush.py IN.json OUT.npz``; IN is a list of ``{"rle", "height", "width"}``,
OUT holds item i as ``decoded_<i>``, a height x width x 4 uint8 array, reshaped as Label
Studio's ``decode_from_annotation`` reshapes it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from label_studio_sdk.converter.brush import decode_rle


def main(source: str, target: str) -> None:
    items = json.loads(Path(source).read_text())
    decoded = {
        f"decoded_{i}": np.reshape(decode_rle(item["rle"]), [item["height"], item["width"], 4])
        for i, item in enumerate(items)
    }
    np.savez(target, **decoded)


if __name__ == "__main__":
    main(*sys.argv[1:])
