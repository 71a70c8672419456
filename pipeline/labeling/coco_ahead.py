"""COCO annotations encoded as images are labeled, held for the run's finish step.

The finish step is serial: after the last image, a run waits while its COCO export reads
every region back and encodes it, on one core. The tracing workers encode each image's
annotations instead, beside the model, and the shards that wrote them leave them here,
by lease: the export then only copies bytes (``export_coco``'s ``ahead``). Only the
lease that wrote them takes them, so what is held always matches the files it wrote. What
is held is bounded: past ``LIMIT_BYTES`` a lease keeps nothing and its export reads the
records, as a run labeled by other processes does.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

LIMIT_BYTES = 256 * 2**20


@dataclass(slots=True)
class _Held:
    shards: dict[str, dict[str, bytes]] = field(default_factory=dict)
    size: int = 0
    over: bool = False  # past the limit: nothing kept for this lease


_held: dict[str, _Held] = {}
_lock = threading.Lock()


def keep(lease: str, shard_id: str, annotations: Mapping[str, bytes]) -> None:
    """Hold a written shard's annotations (image id -> encoded), replacing what an earlier
    try of the same shard left."""
    with _lock:
        held = _held.setdefault(lease, _Held())
        if held.over:
            return
        earlier = held.shards.pop(shard_id, {})
        held.size += sum(map(len, annotations.values())) - sum(map(len, earlier.values()))
        if held.size > LIMIT_BYTES:
            _held[lease] = _Held(over=True)
            return
        held.shards[shard_id] = dict(annotations)


def take(lease: str) -> dict[str, dict[str, bytes]] | None:
    """What the lease's shards left, by shard, then image id; None when it kept nothing.
    Every other lease's is let go too: a process holds one run's at a time."""
    with _lock:
        held = _held.pop(lease, None)
        _held.clear()
    return None if held is None or held.over else held.shards
