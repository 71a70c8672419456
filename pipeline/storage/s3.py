"""Images and runs in S3 or an S3-compatible store, through boto3.

Credentials come only from boto3's own chain (``AWS_*`` variables, profiles, instance roles): no
setting here can hold one, so neither ``run.json`` nor a log line can leak it. The endpoint comes
from the settings or, as boto3 itself does, from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``.
Keys are taken as they are: S3 has no folders to escape, so ``../x`` is a key like any other, and
nothing here turns a key into a local path.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

import boto3  # type: ignore[import-untyped]
from boto3.exceptions import S3UploadFailedError  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

from pipeline.storage import NotFoundError, ObjectInfo, StorageError
from pipeline.storage.s3_settings import S3Settings

SCHEME = "s3://"
MAX_PUT_BYTES = 5 * 1024**3  # S3's limit for a single PUT
_MISSING = {"404", "NoSuchKey", "NotFound"}
_CONDITION_FAILED = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
# What boto3 reads from the environment to pick an endpoint, region or profile: a client made
# under other values is another client.
_ENVIRONMENT = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_PROFILE")


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``, the key kept byte for byte."""
    if not uri.startswith(SCHEME):
        raise StorageError(f"{uri}: not an s3:// URI")
    bucket, _, key = uri.removeprefix(SCHEME).partition("/")
    if not bucket:
        raise StorageError(f"{uri}: no bucket name")
    return bucket, key


class S3Storage:
    """Objects in S3; URIs are ``s3://bucket/key``."""

    def __init__(
        self, settings: S3Settings | None = None, *, threads: int = 8, page_size: int = 1000
    ) -> None:
        self.settings = settings or S3Settings()
        self.pool = self.settings.max_pool_connections or max(10, threads + 2)
        self.page_size = page_size  # keys per listing request; S3 returns at most 1000

    @property
    def client(self) -> Any:
        return _client(self.settings, self.pool)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` taken as a folder (``p`` lists ``p/...``, not
        ``p2/...``), in S3's key order; keys ending in ``/`` are folder markers, not files."""
        bucket, key = split_uri(prefix)
        folder = key.rstrip("/") + "/" if key.strip("/") else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=folder, PaginationConfig={"PageSize": self.page_size}
        )
        try:
            for page in pages:
                for item in page.get("Contents", ()):
                    name: str = item["Key"]
                    if name.endswith("/"):
                        continue
                    yield ObjectInfo(
                        uri=f"{SCHEME}{bucket}/{name}",
                        key=name[len(folder) :],
                        size=int(item["Size"]),
                        etag=str(item["ETag"]).strip('"'),
                    )
        except (ClientError, BotoCoreError) as exc:
            raise _error(prefix, "cannot list", exc) from exc

    def read(self, uri: str) -> bytes:
        bucket, key = split_uri(uri)
        try:
            data: bytes = self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise _error(uri, "cannot read", exc) from exc
        return data

    def read_tail(self, uri: str, size: int) -> bytes:
        """The last ``size`` bytes, in one ranged GET."""
        bucket, key = split_uri(uri)
        try:
            response = self.client.get_object(Bucket=bucket, Key=key, Range=f"bytes=-{size}")
            data: bytes = response["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise _error(uri, "cannot read", exc) from exc
        return data

    def read_versioned(self, uri: str) -> tuple[bytes, str]:
        """The content and its ETag, for ``write_if``."""
        bucket, key = split_uri(uri)
        try:
            response = self.client.get_object(Bucket=bucket, Key=key)
            data: bytes = response["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise _error(uri, "cannot read", exc) from exc
        return data, str(response["ETag"])

    def write_if(self, uri: str, data: bytes, *, match: str | None) -> str | None:
        """A conditional PUT: only if absent (``If-None-Match: *``) or still at the ETag
        ``match`` (``If-Match``); the new ETag, or None when the condition failed. A retried
        PUT whose first try landed also fails the condition: callers that must know read the
        object back."""
        bucket, key = split_uri(uri)
        condition = {"IfNoneMatch": "*"} if match is None else {"IfMatch": match}
        try:
            response = self.client.put_object(Bucket=bucket, Key=key, Body=data, **condition)
        except (ClientError, BotoCoreError) as exc:
            if _code(exc) in _CONDITION_FAILED:
                return None
            raise _error(uri, "cannot write", exc) from exc
        return str(response["ETag"])

    def delete_if(self, uri: str, *, match: str) -> bool:
        bucket, key = split_uri(uri)
        try:
            self.client.delete_object(Bucket=bucket, Key=key, IfMatch=match)
        except (ClientError, BotoCoreError) as exc:
            if _code(exc) in _CONDITION_FAILED | _MISSING:
                return False
            raise _error(uri, "cannot delete", exc) from exc
        return True

    def delete(self, uri: str) -> None:
        """Remove the object; S3 answers a missing one as deleted."""
        bucket, key = split_uri(uri)
        try:
            self.client.delete_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise _error(uri, "cannot delete", exc) from exc

    def move(self, uri: str, to: str) -> None:
        """Copy, then delete: S3 has no rename. A failure between the two leaves both."""
        bucket, key = split_uri(uri)
        to_bucket, to_key = split_uri(to)
        try:
            self.client.copy_object(
                Bucket=to_bucket, Key=to_key, CopySource={"Bucket": bucket, "Key": key}
            )
            self.client.delete_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise _error(uri, f"cannot move to {to}", exc) from exc

    def write_atomic(self, uri: str, data: bytes) -> None:
        """One PUT: S3 shows readers the old object or the whole new one, never a part."""
        bucket, key = split_uri(uri)
        if len(data) > MAX_PUT_BYTES:
            raise StorageError(f"{uri}: cannot write {len(data)} bytes in one PUT (limit 5 GiB)")
        try:
            self.client.put_object(Bucket=bucket, Key=key, Body=data)
        except (ClientError, BotoCoreError) as exc:
            raise _error(uri, "cannot write", exc) from exc

    @contextmanager
    def write_stream(self, uri: str) -> Iterator[BinaryIO]:
        """Spooled to a local temp file, then uploaded when the block ends (in parts when it
        is large): memory stays flat whatever the size, and S3 shows the object only whole.
        A block that raises uploads nothing."""
        bucket, key = split_uri(uri)
        with tempfile.TemporaryFile() as spool:
            yield spool
            spool.seek(0)
            try:
                self.client.upload_fileobj(spool, bucket, key)
            except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
                raise _error(uri, "cannot write", exc) from exc

    def exists(self, uri: str) -> bool:
        bucket, key = split_uri(uri)
        try:
            self.client.head_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            error = _error(uri, "cannot check", exc)
            if isinstance(error, NotFoundError):
                return False
            raise error from exc
        return True

    def join(self, base: str, *parts: str) -> str:
        """Key parts joined with ``/``; a part that is empty, ``.`` or ``..`` is refused, so
        every joined key stays under ``base`` for any tool that reads keys as paths."""
        segments = [segment for part in parts for segment in part.split("/")]
        bad = [s for s in segments if s in ("", ".", "..")]
        if bad:
            raise ValueError(f"{base}: refusing to join {parts!r} (empty, '.' or '..' segment)")
        return "/".join([base.rstrip("/"), *segments])

    def ensure_writable(self, prefix: str) -> None:
        """The bucket exists and this client may use it: fail now, not after the first
        shard's work. The first write is the run folder's lease, so no probe object is
        needed (and none can be left behind)."""
        bucket, _ = split_uri(prefix)
        try:
            self.client.head_bucket(Bucket=bucket)
        except (ClientError, BotoCoreError) as exc:
            why = {"404": "no such bucket", "403": "access denied"}.get(_code(exc), _reason(exc))
            raise StorageError(
                f"{prefix}: bucket {bucket!r} is not usable ({why})",
                transient=_error(prefix, "", exc).transient,
            ) from exc


def _code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "unknown"))
    return type(exc).__name__


# Worth a second try: the store was busy or the reply was lost, not a refusal.
_TRANSIENT = {"SlowDown", "Throttling", "RequestTimeout", "InternalError", "ServiceUnavailable"}


def _error(uri: str, what: str, exc: Exception) -> StorageError:
    """The storage error for a failed call: missing, transient (network, throttling, 5xx,
    after boto3's own retries) or a refusal."""
    message = f"{uri}: {what} ({_reason(exc)})"
    if isinstance(exc, ClientError):
        code = _code(exc)
        if code in _MISSING:
            return NotFoundError(message)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        return StorageError(message, transient=code in _TRANSIENT or status >= 500)
    return StorageError(message, transient=True)  # connection refused, dropped or timed out


def _reason(exc: Exception) -> str:
    """The S3 error code (``NoSuchKey``, ``AccessDenied``, ``SlowDown``) and how many tries it
    took; for network failures, botocore's one-line description."""
    if not isinstance(exc, ClientError):
        return str(exc)
    retries = int(exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0))
    return f"{_code(exc)} after {retries + 1} attempts" if retries else _code(exc)


_lock = threading.Lock()
_clients: dict[tuple[object, ...], Any] = {}


def _client(settings: S3Settings, pool: int) -> Any:
    """One client per process and configuration: boto3 clients are thread-safe (sessions are
    not, so each client gets its own), and reusing one keeps its connection pool warm."""
    key = (os.getpid(), settings, pool, *(os.environ.get(name) for name in _ENVIRONMENT))
    with _lock:
        client = _clients.get(key)
        if client is None:
            config = Config(
                retries={"mode": "standard", "total_max_attempts": settings.max_attempts},
                connect_timeout=settings.connect_timeout,
                read_timeout=settings.read_timeout,
                max_pool_connections=pool,
                s3={"addressing_style": settings.addressing_style},
            )
            client = boto3.session.Session().client(
                "s3",
                endpoint_url=settings.endpoint_url,
                region_name=settings.region,
                config=config,
            )
            _clients[key] = client
    return client
