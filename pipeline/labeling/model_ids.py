"""Which model a run uses (architecture, classes, ``model_version``) without loading it.

A rerun with nothing to label needs only the model's identity, to check it against the run
folder; loading the model (torch, weights, an engine) would cost more than the whole rerun.
The first load of a checkpoint remembers its identity in ``<cache>/models.json`` under the
SHA-256 of its bytes and the output stride asked for: the same bytes make the same model, so
the entry can never describe another file, and a file that loaded once is known to load.
"""

from __future__ import annotations

import contextlib
import hashlib
from functools import lru_cache
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from deeplab.bundled import DEMO_CHECKPOINT
from deeplab.errors import CheckpointError
from deeplab.files import write_atomic
from pipeline.config import RunConfig, default_cache_dir
from pipeline.labeling.zoo import fetch, is_named
from pipeline.run.manifest import ModelInfo

DEMO = "demo"
_KNOWN = "models.json"
_Entries = TypeAdapter(dict[str, ModelInfo])


def resolve_checkpoint(ref: str, cache_dir: Path | None = None, mirror: str | None = None) -> Path:
    """``demo`` is the model bundled with the package; a name ``prelabel models`` lists is
    fetched into the cache on first use; anything else is a file path."""
    if ref == DEMO:
        return DEMO_CHECKPOINT
    if is_named(ref):
        return fetch(ref, cache_dir or default_cache_dir(), mirror=mirror)
    return Path(ref).expanduser()


def checkpoint_of(config: RunConfig) -> Path:
    """The checkpoint file a run's ``model`` names."""
    return resolve_checkpoint(config.model, config.cache_dir, config.model_mirror)


def model_info(config: RunConfig) -> ModelInfo:
    """The run's model as the run folder records it: remembered, or loaded (and remembered)."""
    key = _key(config)
    known = _read(_path(config)).get(key)
    if known is not None:
        return known.model_copy(update={"ref": config.model})
    from pipeline.labeling.models import load_predictor  # torch loads here, and only here

    meta = load_predictor(config).meta
    info = ModelInfo(
        ref=config.model,
        arch=meta.arch,
        source=meta.source,
        model_version=meta.model_version,
        class_names=meta.class_names,
    )
    _remember(_path(config), key, info)
    return info


def _remember(path: Path, key: str, info: ModelInfo) -> None:
    """Add one checkpoint's identity; entries of other checkpoints are kept."""
    entries = _read(path)
    entries[key] = info
    with contextlib.suppress(OSError):  # a read-only cache costs a model load next time
        write_atomic(path, _Entries.dump_json(entries, indent=1))


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """The file's (inode, size, mtime): what changes when it is replaced or rewritten."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _key(config: RunConfig) -> str:
    path = checkpoint_of(config)
    return f"{_sha256(path, file_stamp(path))} stride={config.output_stride or 'as-trained'}"


@lru_cache(maxsize=8)
def _sha256(path: Path, stamp: tuple[int, int, int] | None) -> str:
    """The checkpoint's digest, once per process for the file as it is (``stamp``): a run
    asks for its model's identity several times, and a checkpoint can be hundreds of MB."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc.strerror})") from exc
    return digest.hexdigest()


def _path(config: RunConfig) -> Path:
    return (config.cache_dir or default_cache_dir()) / _KNOWN


def _read(path: Path) -> dict[str, ModelInfo]:
    """Entries on file; a missing, unreadable or damaged file is an empty one (it is a cache)."""
    try:
        return _Entries.validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return {}
