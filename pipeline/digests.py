"""Names as 8-byte digests in one sorted array: which of a million names were seen, in 8 MB,
where a set of the strings takes over 100.

Two names share a digest with odds of about N^2 / 2^65 (under 10^-7 at 10^6 names); callers
use a match to find candidates, or accept that rare false match where stated.
"""

from __future__ import annotations

import array
import hashlib
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt


def digest(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), signed=True)


def sorted_digests(names: Iterable[str]) -> npt.NDArray[np.int64]:
    """Every name's digest, sorted, in one array that grows in place: a list of arrays joined
    at the end, then sorted by ``np.unique``, held the digests three times over."""
    digests = array.array("q", (digest(name) for name in names))
    every = np.frombuffer(digests, np.int64) if digests else np.empty(0, np.int64)
    every.sort()
    return every


def among(values: npt.NDArray[np.int64], sorted_digests: npt.NDArray[np.int64]) -> set[int]:
    """Those of ``values`` that ``sorted_digests`` holds, found by bisection: no copy of it."""
    return set(values[holds(sorted_digests, values)].tolist())


def holds(
    sorted_digests: npt.NDArray[np.int64], values: npt.NDArray[np.int64]
) -> npt.NDArray[np.bool_]:
    """For each of ``values``, whether ``sorted_digests`` has it."""
    if not len(sorted_digests):
        return np.zeros(len(values), bool)
    at = np.minimum(np.searchsorted(sorted_digests, values), len(sorted_digests) - 1)
    found: npt.NDArray[np.bool_] = sorted_digests[at] == values
    return found


def repeated(sorted_digests: npt.NDArray[np.int64]) -> set[int]:
    same = sorted_digests[1:] == sorted_digests[:-1]
    return set(sorted_digests[1:][same].tolist())
