"""Named models: the real download code against a loopback server. The hash is checked, a
truncated or wrong file never lands in the cache, and a cached model needs no server."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

import deeplab
from pipeline.config import RunConfig
from pipeline.labeling import zoo
from pipeline.labeling.model_ids import model_info
from pipeline.labeling.zoo import ModelDownloadError, fetch

NAME = "torchvision/deeplabv3_mobilenet_v3_large"
ROOT = Path(__file__).resolve().parents[2]


class _Files(BaseHTTPRequestHandler):
    """Serves ``files`` by name; ``cut`` announces the whole length but sends half."""

    files: ClassVar[dict[str, bytes]] = {}
    cut: ClassVar[bool] = False
    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.requests.append(self.path)
        data = self.files.get(self.path.rsplit("/", 1)[-1])
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2] if self.cut else data)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Files]]]:
    handler = type("Handler", (_Files,), {"files": {}, "cut": False, "requests": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/models", handler
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A torchvision DeepLabV3-MobileNetV3 file as torchvision writes it (random weights)."""
    torch.manual_seed(0)
    model = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)
    path = tmp_path_factory.mktemp("w") / "w.pth"
    torch.save(model.state_dict(), path)
    return path.read_bytes()


def _published(monkeypatch: pytest.MonkeyPatch, data: bytes) -> zoo.NamedModel:
    """The registry's entry, named for these bytes as its publisher would name them."""
    prefix = hashlib.sha256(data).hexdigest()[:8]
    entry = dataclasses.replace(
        zoo.NAMED[NAME], file=f"deeplabv3_mobilenet_v3_large-{prefix}.pth", sha256_prefix=prefix
    )
    monkeypatch.setitem(zoo.NAMED, NAME, entry)
    return entry


@pytest.fixture
def published(
    server: tuple[str, type[_Files]], weights: bytes, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, type[_Files], zoo.NamedModel]:
    """The weights on the loopback server, and the registry entry named for them."""
    url, handler = server
    entry = _published(monkeypatch, weights)
    handler.files[entry.file] = weights
    return url, handler, entry


def _cache_files(cache: Path) -> list[str]:
    folder = cache / "models"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_named_model_downloads_once_converts_and_then_runs_offline(
    published: tuple[str, type[_Files], zoo.NamedModel], weights: bytes, tmp_path: Path
) -> None:
    url, handler, entry = published
    cache = tmp_path / "cache"
    seen: list[tuple[int, int | None]] = []

    path = fetch(NAME, cache, mirror=url, progress=lambda done, total: seen.append((done, total)))

    assert handler.requests == [f"/models/{entry.file}"]
    assert seen[-1] == (len(weights), len(weights))
    assert _cache_files(cache) == [f"{Path(entry.file).stem}.safetensors"]  # no .pth, no .part
    model, meta = deeplab.load(path)
    assert meta.arch == "deeplabv3_mobilenet_v3_large" and len(meta.class_names) == 21
    assert meta.provenance["url"] == f"{url}/{entry.file}"
    assert meta.provenance["reported_miou"] == 60.3
    # The same weights as the published file, read the way any torchvision file is read.
    reference, _ = deeplab.load(_saved(tmp_path, weights))
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True)
    )

    # With the server gone, a run uses the cache: fetch, and the run's model identity.
    handler.files.clear()
    assert fetch(NAME, cache, mirror="http://127.0.0.1:9/nothing") == path
    config = RunConfig(source=str(tmp_path), out=str(tmp_path / "run"), model=NAME,
                       cache_dir=cache, model_mirror="http://127.0.0.1:9/")  # fmt: skip
    assert config.model == NAME  # a name, not made into a path
    assert model_info(config).model_version == meta.model_version
    assert handler.requests == [f"/models/{entry.file}"]


def _saved(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "published.pth"
    path.write_bytes(data)
    return path


def test_a_file_with_another_hash_is_refused_and_not_cached(
    server: tuple[str, type[_Files]], weights: bytes, tmp_path: Path
) -> None:
    url, handler = server
    entry = zoo.NAMED[NAME]  # the real entry: these bytes are not torchvision's file
    handler.files[entry.file] = weights
    with pytest.raises(ModelDownloadError, match=f"SHA-256 starts .*, not {entry.sha256_prefix}"):
        fetch(NAME, tmp_path / "cache", mirror=url)
    assert _cache_files(tmp_path / "cache") == []


def test_a_truncated_download_is_refused_and_not_cached(
    published: tuple[str, type[_Files], zoo.NamedModel], weights: bytes, tmp_path: Path
) -> None:
    url, handler, _ = published
    handler.cut = True
    with pytest.raises(ModelDownloadError, match=f"ended after {len(weights) // 2} of"):
        fetch(NAME, tmp_path / "cache", mirror=url)
    assert _cache_files(tmp_path / "cache") == []


def test_a_cache_that_cannot_be_written_is_named(
    published: tuple[str, type[_Files], zoo.NamedModel], tmp_path: Path
) -> None:
    url, _, _ = published
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models").write_text("a file where the folder goes")
    with pytest.raises(ModelDownloadError, match=r"cache/models/.*: cannot write the download"):
        fetch(NAME, tmp_path / "cache", mirror=url)


def test_without_network_one_line_names_the_url_and_where_to_put_the_file(
    tmp_path: Path,
) -> None:
    entry = zoo.NAMED[NAME]
    with pytest.raises(ModelDownloadError) as caught:
        fetch(NAME, tmp_path / "cache", mirror="http://127.0.0.1:9/models")
    message = str(caught.value)
    assert "\n" not in message
    assert f"http://127.0.0.1:9/models/{entry.file}" in message
    assert str(tmp_path / "cache" / "models" / entry.file) in message
    assert _cache_files(tmp_path / "cache") == []


def test_the_cli_lists_the_named_models() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "from flows.cli import app; app()", "models"],
        capture_output=True, text=True, check=False, cwd=ROOT, env={"COLUMNS": "200",
        "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name in ("demo", *zoo.NAMED):
        assert name in done.stderr
    for model in zoo.NAMED.values():
        assert f"{model.miou:.1f}%" in done.stderr


def test_annotate_runs_a_cached_named_model_without_network(weights: bytes, tmp_path: Path) -> None:
    import json
    import os
    import shutil
    import subprocess
    import sys

    cache = tmp_path / "cache"
    model, meta = deeplab.load(_saved(tmp_path, weights))
    deeplab.save(model, meta, zoo.converted(zoo.NAMED[NAME], cache))  # as a first use leaves it
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(ROOT / "examples" / "scene-000.jpg", source)
    env = {**os.environ, "PRELABEL_CACHE_DIR": str(cache),
           "PRELABEL_MODEL_MIRROR": "http://127.0.0.1:9/nothing-listens"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", "from flows.cli import app; app()", "annotate", str(source),
         "--out", str(tmp_path / "run"), "--model", NAME, "--device", "cpu"],
        capture_output=True, text=True, check=False, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["model"]["ref"] == NAME
    assert manifest["model"]["model_version"] == meta.model_version
