"""One writer per run folder: a lease object naming its holder, renewed while the run works.

Two runs writing one folder would each add shards the other's ledger reads, and one's labels
would silently replace the other's. A run takes the lease before it plans (a conditional
create, so of two runs started together exactly one gets it), renews it from a background
thread, checks it before every shard and manifest write, and removes it when it ends. A
lease whose holder stopped renewing (killed, machine gone) is taken over after a timeout, or
at once when its holder was a process of this host that no longer exists.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.errors import PrelabelError
from pipeline.retry import retrying
from pipeline.run.layout import LEASE
from pipeline.storage import NotFoundError, Storage, StorageError

log = logging.getLogger(__name__)


class LeaseHeldError(PrelabelError):
    """Another live run holds the run folder."""


class LeaseLostError(PrelabelError):
    """This run's lease was taken over (it went unrenewed past the timeout): it must stop
    writing, or two runs would write one folder."""


class LeaseInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    token: str  # this holding, so a run can tell its own lease from another's
    host: str
    pid: int
    started_at: datetime
    renewed_at: datetime

    def describe(self) -> str:
        return f"{self.host} pid {self.pid}, started {self.started_at:%Y-%m-%d %H:%M:%S} UTC"


@dataclass(eq=False)
class Lease:
    """A lease this process holds on ``uri``."""

    storage: Storage
    uri: str
    info: LeaseInfo
    tag: str  # the stored object's version, for the next conditional write
    timeout: float
    lost: str | None = None  # why, once the renewing thread found another holder
    _stop: threading.Event = field(default_factory=threading.Event)
    _renewer: threading.Thread | None = None

    @property
    def token(self) -> str:
        return self.info.token

    def renew_until_released(self) -> None:
        self._renewer = threading.Thread(target=self._renew_loop, name="lease", daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.timeout / 4):
            try:
                self._renew()
            except StorageError as exc:  # a blip: the next beat tries again, well in time
                log.warning("could not renew the run folder's lease: %s", exc)
            if self.lost:
                log.error("%s", self.lost)
                return

    def _renew(self) -> None:
        info = self.info.model_copy(update={"renewed_at": datetime.now(UTC)})
        data = info.model_dump_json().encode()
        tag = self.storage.write_if(self.uri, data, match=self.tag)
        if tag is None:
            holder = _holder(self.storage, self.uri)
            if holder is None or holder[0] is None or holder[0].token != self.token:
                self.lost = _lost_message(self.uri, holder[0] if holder else None)
                return
            # Ours: a write of this beat or an earlier one landed although its reply was lost.
            info, tag = holder[0], holder[1]
        self.info, self.tag = info, tag

    def release(self) -> None:
        """Stop renewing (a beat under way lands first, so the tag is current), then delete
        the lease if it is still this holding's."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        try:
            retrying(self._delete)
        except StorageError as exc:  # left behind, it goes stale and is taken over
            log.warning("could not remove the run folder's lease: %s", exc)

    def _delete(self) -> None:
        while not self.storage.delete_if(self.uri, match=self.tag):
            holder = _holder(self.storage, self.uri)
            if holder is None or holder[0] is None or holder[0].token != self.token:
                return  # gone, or another run's now
            self.tag = holder[1]  # ours, changed by a write whose reply was lost


def verify(storage: Storage, uri: str, token: str) -> None:
    """Raise ``LeaseLostError`` unless the lease at ``uri`` is still the holding ``token``:
    called before each write, by this process or by a worker writing under its lease."""
    holder = _holder(storage, uri)
    if holder is None or holder[0] is None or holder[0].token != token:
        raise LeaseLostError(_lost_message(uri, holder[0] if holder else None))


_lock = threading.Lock()
_held: dict[str, tuple[Lease, int]] = {}  # uri -> (lease, how many holders in this process)


def held_here(uri: str) -> bool:
    """Whether this process holds the lease at ``uri`` now."""
    with _lock:
        return uri in _held


@contextmanager
def holding(storage: Storage, uri: str, *, timeout: float) -> Iterator[Lease]:
    """Hold the lease at ``uri`` for the block; a block in the same process that holds it
    already shares the holding (the CLI takes it before the flow, which takes it again)."""
    with _lock:
        if uri in _held:
            lease, count = _held[uri]
            _held[uri] = (lease, count + 1)
        else:
            lease = _acquire(storage, uri, timeout)
            lease.renew_until_released()
            _held[uri] = (lease, 1)
    try:
        yield lease
    finally:
        with _lock:
            lease, count = _held[uri]
            if count > 1:
                _held[uri] = (lease, count - 1)
            else:
                del _held[uri]
                lease.release()


def _acquire(storage: Storage, uri: str, timeout: float) -> Lease:
    now = datetime.now(UTC)
    info = LeaseInfo(
        token=_process_token(),
        host=socket.gethostname(),
        pid=os.getpid(),
        started_at=now,
        renewed_at=now,
    )
    data = info.model_dump_json().encode()
    holder: tuple[LeaseInfo | None, str] | None = None
    for _ in range(3):  # each pass loses only to a run that changed the lease meanwhile
        tag = storage.write_if(uri, data, match=None if holder is None else holder[1])
        if tag is not None:
            return Lease(storage, uri, info, tag, timeout)
        holder = _holder(storage, uri)
        if holder is None:
            continue  # released between our write and our read: try again
        other = holder[0]
        if other is not None and other.token == info.token:
            # This process's: this write, or an earlier try's, landed but its reply was lost.
            return Lease(storage, uri, other, holder[1], timeout)
        if other is not None and not _stale(other, timeout):
            raise LeaseHeldError(
                f"{_root(uri)} is being written by {other.describe()} (renewed "
                f"{_silent(other):.0f} s ago); wait for it to end, or write to another --out"
            )
        log.warning("taking over the run folder's lease from %s", _why_stale(other))
    raise LeaseHeldError(f"{_root(uri)}: another run keeps taking the lease; try again")


_tokens: dict[int, str] = {}


def _process_token() -> str:
    """One token per process (a forked child gets its own): a process holds a lease at most
    once (holdings are shared), so a lease with this token is one an earlier try made."""
    return _tokens.setdefault(os.getpid(), uuid.uuid4().hex)


def _holder(storage: Storage, uri: str) -> tuple[LeaseInfo | None, str] | None:
    """The lease's holder (None if the object is not a lease) and its tag; None if absent."""
    try:
        data, tag = storage.read_versioned(uri)
    except NotFoundError:
        return None
    try:
        return LeaseInfo.model_validate_json(data), tag
    except ValidationError:
        return None, tag


def _stale(holder: LeaseInfo, timeout: float) -> bool:
    gone = holder.host == socket.gethostname() and not _alive(holder.pid)
    return gone or _silent(holder) > timeout


def _why_stale(holder: LeaseInfo | None) -> str:
    if holder is None:
        return "a file that is not a lease"
    if holder.host == socket.gethostname() and not _alive(holder.pid):
        return f"{holder.describe()}: its process is gone"
    return f"{holder.describe()}: not renewed for {_silent(holder):.0f} s"


def _silent(holder: LeaseInfo) -> float:
    """Seconds since the holder last renewed, by this host's clock."""
    return (datetime.now(UTC) - holder.renewed_at).total_seconds()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _lost_message(uri: str, holder: LeaseInfo | None) -> str:
    now = f"now held by {holder.describe()}" if holder else "it is gone"
    return f"{_root(uri)}: this run lost the run folder's lease ({now}); it stopped writing"


def _root(uri: str) -> str:
    return uri.removesuffix(LEASE).rstrip("/\\")
