"""A source's image files as columns, sorted by key.

A bucket lists millions of files; an ``ObjectInfo`` each would hold about 400 bytes apiece
for the whole plan (10^6 files: 400 MB before anything else). Here the listing is gathered
into Arrow columns a chunk at a time, and only the images a pass labels become objects again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.labeling.decode import is_image_name
from pipeline.storage import ObjectInfo

_CHUNK = 65_536  # listed files turned into columns at a time


@dataclass(frozen=True, slots=True)
class Listing:
    uri: pa.Array  # binary: a local name need not be UTF-8 (``os.fsencode``'s bytes)
    key: pa.Array  # sorted
    size: pa.Array
    etag: pa.Array
    skipped: int  # listed files that are not images by extension

    def __len__(self) -> int:
        return len(self.key)

    def items(self, rows: npt.NDArray[np.bool_] | None = None) -> list[ObjectInfo]:
        """The images as objects, all or where ``rows`` is true, in key order."""
        columns = (self.uri, self.key, self.size, self.etag)
        if rows is not None:
            mask = pa.array(rows, pa.bool_())
            columns = tuple(pc.filter(c, mask) for c in columns)
        return [
            ObjectInfo(uri.decode("utf-8", "surrogateescape"), key, size, etag)
            for uri, key, size, etag in zip(*(c.to_pylist() for c in columns), strict=True)
        ]


def image_listing(listed: Iterable[ObjectInfo], leave_out: Callable[[ObjectInfo], bool]) -> Listing:
    """The images of ``listed`` (by extension), less those ``leave_out`` says, sorted by key:
    shards, ids and outputs are the same whatever order the store lists in."""
    chunks: list[pa.RecordBatch] = []
    rows: list[tuple[bytes, str, int, str]] = []
    skipped = 0
    for item in listed:
        if not is_image_name(item.key):
            skipped += 1
        elif not leave_out(item):
            uri = item.uri.encode("utf-8", "surrogateescape")
            rows.append((uri, item.key, item.size, item.etag))
            if len(rows) == _CHUNK:
                chunks.append(_batch(rows))
                rows = []
    if rows or not chunks:
        chunks.append(_batch(rows))
    columns = [pa.chunked_array(c).combine_chunks() for c in zip(*chunks, strict=True)]
    del chunks
    key = columns[1]
    if len(key) > 1 and not pc.all(pc.less(key[:-1], key[1:])).as_py():
        order = pc.sort_indices(key)
        for n in range(len(columns)):  # one column at a time: a copy of one, not of all
            columns[n] = columns[n].take(order)
    uri, key, size, etag = columns
    return Listing(uri, key, size, etag, skipped)


_NAMES = ("uri", "key", "size", "etag")


def _batch(rows: list[tuple[bytes, str, int, str]]) -> pa.RecordBatch:
    columns = list(zip(*rows, strict=True)) if rows else [(), (), (), ()]
    types = (pa.binary(), pa.string(), pa.int64(), pa.string())
    return pa.RecordBatch.from_arrays(
        [pa.array(c, t) for c, t in zip(columns, types, strict=True)], names=list(_NAMES)
    )
