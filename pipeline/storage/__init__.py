"""Where images come from and runs go: one small interface per URI scheme (``base``), local
folders (``local``) and S3 (``s3``, which alone imports boto3, when a URI needs it)."""

from __future__ import annotations

from pipeline.storage.base import (
    NotFoundError,
    ObjectInfo,
    Storage,
    StorageConfig,
    StorageError,
    absolute,
    is_uri,
    printable,
    scheme_of,
)
from pipeline.storage.local import LocalStorage

__all__ = [
    "LocalStorage",
    "NotFoundError",
    "ObjectInfo",
    "Storage",
    "StorageConfig",
    "StorageError",
    "absolute",
    "is_uri",
    "printable",
    "scheme_of",
    "storage_for",
]


def storage_for(uri: str, config: StorageConfig | None = None) -> Storage:
    """The storage that serves ``uri``'s scheme; without a config, S3 takes its defaults and
    whatever boto3 finds in the environment."""
    if not is_uri(uri):
        return LocalStorage()
    scheme = scheme_of(uri)
    if scheme == "s3":
        from pipeline.storage.s3 import S3Storage  # boto3 loads only when a run touches S3

        if config is None:
            return S3Storage()
        return S3Storage(config.s3, threads=config.workers)
    raise StorageError(
        f"{uri}: unsupported storage scheme {scheme!r}; give a local folder or s3://"
    )
