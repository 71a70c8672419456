"""JSON arrays written piece by piece: an export's memory is one part's or one item's, not
the run's.

``orjson.dumps`` of each part's list without its brackets, or of each item, joined by commas,
is byte for byte the array ``orjson.dumps`` writes for the whole list at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, BinaryIO

import orjson


class JsonArray:
    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.empty = True
        out.write(b"[")

    def extend(self, items: Sequence[Any]) -> None:
        if not items:
            return
        if not self.empty:
            self.out.write(b",")
        self.out.write(orjson.dumps(items, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1])
        self.empty = False

    def extend_encoded(self, items: Sequence[bytes]) -> None:
        """Items already encoded, each a comma-separated run of elements (or empty)."""
        data = b",".join(item for item in items if item)
        if not data:
            return
        if not self.empty:
            self.out.write(b",")
        self.out.write(data)
        self.empty = False

    def append(self, item: Any) -> None:
        if not self.empty:
            self.out.write(b",")
        self.out.write(orjson.dumps(item, option=orjson.OPT_SERIALIZE_NUMPY))
        self.empty = False

    def close(self) -> None:
        self.out.write(b"]")
