"""A shard's records file, encoded while the shard runs.

Encoded at the end, the regions table held up the end of every shard on one core (0.09 s
for 144 bench images) after its last image, with every image's rows in memory until then.
Here the rows are encoded in row groups of ``GROUP_IMAGES`` images, in key order, as soon as
every image before them is traced, on a thread of their own (Arrow releases the GIL while it
encodes). The rows and their order are those of the table written at once; the file is
still written whole, when the shard ends.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.run.tables import REGIONS_SCHEMA

GROUP_IMAGES = 32


class RecordsWriter:
    """Rows in, by image key, in any order; the Parquet file's bytes out."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._order = sorted(keys)
        self._next = 0  # the first image in key order not yet taken
        self._arrived: dict[str, pa.Table | None] = {}
        self._group: list[pa.Table] = []
        self._group_images = 0
        self._buffer = io.BytesIO()
        # zstd's level 1 writes files as small as its default level's on region rows, in
        # 0.66 against 0.76 ms per bench image.
        self._writer = pq.ParquetWriter(
            self._buffer, REGIONS_SCHEMA, compression="zstd", compression_level=1
        )
        self._encoder = ThreadPoolExecutor(1, thread_name_prefix="records")
        self._encoded: list[Future[None]] = []

    def add(self, key: str, rows: pa.Table | None) -> None:
        """An image's rows; None for an image with none (a failed one)."""
        self._arrived[key] = rows
        while self._next < len(self._order) and self._order[self._next] in self._arrived:
            taken = self._arrived.pop(self._order[self._next])
            self._next += 1
            if taken is not None and taken.num_rows:
                self._group.append(taken)
            self._group_images += 1
            if self._group_images == GROUP_IMAGES:
                self._encode_group()

    def finish(self) -> bytes:
        """The file, once every key has been added."""
        if self._next < len(self._order):
            raise RuntimeError(f"no rows given for {self._order[self._next]!r}")
        self._encode_group()
        self._encoder.shutdown()
        for encoded in self._encoded:
            encoded.result()  # an encoding error is raised here
        self._writer.close()
        return self._buffer.getvalue()

    def abandon(self) -> None:
        """The shard failed: nothing more is encoded, and nothing is written."""
        self._encoder.shutdown(wait=False, cancel_futures=True)

    def _encode_group(self) -> None:
        if self._group:
            table = pa.concat_tables(self._group)
            self._encoded.append(self._encoder.submit(self._writer.write_table, table))
        self._group, self._group_images = [], 0
