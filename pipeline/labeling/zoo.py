"""Published DeepLab weights by name: downloaded once, checked, converted, then used offline.

``--model torchvision/deeplabv3_resnet101`` names a file its publisher serves at a stable
URL with a hash in its name. The file lands in ``<cache>/models/`` whole, or not at all: it
is streamed to a temporary file, its SHA-256 must start with the publisher's prefix (the
check torchvision itself makes; the full digest is not published), and only then is it
renamed into place. It is then converted once to the project's checkpoint, with the
architecture, classes, normalization and where it came from in its metadata; every later
run reads that file and needs no network.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from pipeline.errors import PrelabelError

TORCHVISION = "https://download.pytorch.org/models/"
Progress = Callable[[int, int | None], None]  # (bytes so far, total bytes when known)
_VOC = "21 (VOC)"  # Pascal VOC's 20 classes and background
_COCO_VOC = "COCO 2017, VOC classes"  # COCO train2017 images of the 20 VOC categories
_CHUNK = 1 << 20


class ModelDownloadError(PrelabelError):
    """A named model that could not be fetched; the message says from where and where to put
    the file by hand."""


@dataclass(frozen=True, slots=True)
class NamedModel:
    name: str  # what --model takes
    file: str  # the publisher's file name, hash prefix included
    sha256_prefix: str  # what the publisher's name says the SHA-256 starts with
    arch: str
    classes: str
    data: str  # what it was trained on
    miou: float  # the publisher's figure, in percent
    measured_on: str  # where the publisher measured it
    megabytes: float
    license: str
    base_url: str = TORCHVISION


NAMED: dict[str, NamedModel] = {
    m.name: m
    for m in (
        NamedModel(
            "torchvision/deeplabv3_mobilenet_v3_large",
            "deeplabv3_mobilenet_v3_large-fc3c493d.pth",
            "fc3c493d",
            "deeplabv3_mobilenet_v3_large",
            _VOC,
            _COCO_VOC,
            60.3,
            "COCO val2017, VOC labels",
            42.3,
            "BSD-3",
        ),
        NamedModel(
            "torchvision/deeplabv3_resnet50",
            "deeplabv3_resnet50_coco-cd0a2569.pth",
            "cd0a2569",
            "deeplabv3_resnet50",
            _VOC,
            _COCO_VOC,
            66.4,
            "COCO val2017, VOC labels",
            160.5,
            "BSD-3",
        ),
        NamedModel(
            "torchvision/deeplabv3_resnet101",
            "deeplabv3_resnet101_coco-586e9e4e.pth",
            "586e9e4e",
            "deeplabv3_resnet101",
            _VOC,
            _COCO_VOC,
            67.4,
            "COCO val2017, VOC labels",
            233.2,
            "BSD-3",
        ),
    )
}


def is_named(ref: str) -> bool:
    return ref in NAMED


def converted(model: NamedModel, cache_dir: Path) -> Path:
    """Where the project's checkpoint of ``model`` is kept."""
    return cache_dir / "models" / f"{Path(model.file).stem}.safetensors"


def fetch(
    name: str, cache_dir: Path, *, mirror: str | None = None, progress: Progress | None = None
) -> Path:
    """The project's checkpoint of the named model: made on first use (download, check,
    convert), read from the cache after. ``mirror`` replaces the publisher's base URL."""
    model = NAMED[name]
    out = converted(model, cache_dir)
    if out.exists():
        return out
    raw = cache_dir / "models" / model.file
    url = (mirror.rstrip("/") + "/" if mirror else model.base_url) + model.file
    if not raw.exists():
        _download(url, raw, model.sha256_prefix, progress)
    _convert(model, raw, out, url)
    raw.unlink()  # the converted file holds the same weights
    return out


def _download(url: str, dest: Path, prefix: str, progress: Progress | None) -> None:
    part = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.part")
    digest = hashlib.sha256()
    done = 0
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=60) as answer, part.open("wb") as file:  # noqa: S310  (http(s) from the registry or the user's mirror)
            length = answer.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            while chunk := answer.read(_CHUNK):
                file.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        if total is not None and done != total:
            raise ModelDownloadError(f"{url}: the download ended after {done} of {total} bytes")
        found = digest.hexdigest()
        if not found.startswith(prefix):
            raise ModelDownloadError(
                f"{url}: the file's SHA-256 starts {found[: len(prefix)]}, not {prefix} as its "
                "publisher names it; not kept"
            )
        part.replace(dest)
    except (urllib.error.URLError, TimeoutError, ConnectionError, HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ModelDownloadError(
            f"cannot download {url} ({reason}); without network, fetch it elsewhere and put it "
            f"at {dest}"
        ) from exc
    except OSError as exc:  # the cache's disk, not the network
        raise ModelDownloadError(f"{dest}: cannot write the download ({exc.strerror})") from exc
    finally:
        with contextlib.suppress(OSError):  # no folder to hold it: nothing was written
            part.unlink(missing_ok=True)


def _convert(model: NamedModel, raw: Path, out: Path, url: str) -> None:
    import deeplab  # torch: only a first use converts

    loaded, meta = deeplab.load(raw)
    provenance = {
        "name": model.name,
        "url": url,
        "file": model.file,
        "data": model.data,
        "reported_miou": model.miou,
        "measured_on": model.measured_on,
        "license": model.license,
    }
    deeplab.save(loaded, meta.model_copy(update={"provenance": provenance}), out)
