"""S3 storage against moto's server over real HTTP: listing, reads, writes, errors, retries through
a faulty proxy, and whole runs from and to a bucket compared with the same images on disk."""

from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image
from pydantic import ValidationError

from deeplab.scenes import scenes
from pipeline.config import RunConfig
from pipeline.labeling.annotate import RunSummary, annotate
from pipeline.run.layout import RunLayout
from pipeline.storage import StorageError, storage_for
from pipeline.storage.s3 import S3Storage, split_uri
from pipeline.storage.s3_settings import S3Settings
from tests.helpers import latest

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.s3_server import FaultProxy, S3Endpoint

    MakeProxy = Callable[..., FaultProxy]

pytest_plugins = ["tests.s3_server"]
pytestmark = pytest.mark.s3

HOSTILE = ["../../etc/x.png", "/abs.png", "a\\b.png", "ünï cødé 日本.png", "with space.png"]
TIMINGS = ["read_ms", "decode_ms", "predict_ms", "regions_ms"]


def _put(endpoint: S3Endpoint, bucket: str, objects: dict[str, bytes]) -> None:
    for key, data in objects.items():
        endpoint.client.put_object(Bucket=bucket, Key=key, Body=data)


# -- storage ------------------------------------------------------------------------------------


def test_write_list_read_round_trip(s3_endpoint: S3Endpoint) -> None:
    bucket = s3_endpoint.bucket()
    storage = storage_for(f"s3://{bucket}/x")
    assert isinstance(storage, S3Storage)
    objects = {"a.png": b"alpha", "sub/b.jpg": b"\x00\xffbinary", "sub/deeper/c.png": b""}
    for key, data in objects.items():
        storage.write_atomic(storage.join(f"s3://{bucket}/data", key), data)
    listed = list(storage.list(f"s3://{bucket}/data"))
    assert [item.key for item in listed] == sorted(objects)  # S3 lists in key order
    for item in listed:
        assert item.uri == f"s3://{bucket}/data/{item.key}"
        assert storage.read(item.uri) == objects[item.key]
        assert item.size == len(objects[item.key])
        # A single PUT's ETag is the MD5 of the bytes; the listing gives it without quotes.
        assert item.etag == hashlib.md5(objects[item.key]).hexdigest()
    assert storage.exists(f"s3://{bucket}/data/a.png")
    assert not storage.exists(f"s3://{bucket}/data/nope.png")
    storage.write_atomic(f"s3://{bucket}/data/a.png", b"replaced")
    assert storage.read(f"s3://{bucket}/data/a.png") == b"replaced"


def test_a_prefix_lists_like_a_folder(s3_endpoint: S3Endpoint) -> None:
    bucket = s3_endpoint.bucket()
    keys = ["p", "p/a.png", "p/sub/b.png", "p2/c.png", "pa.png", "p/", "p/sub/", "q/d.png"]
    _put(s3_endpoint, bucket, {key: key.encode() for key in keys})
    storage = S3Storage()
    for prefix in (f"s3://{bucket}/p", f"s3://{bucket}/p/"):
        assert [i.key for i in storage.list(prefix)] == ["a.png", "sub/b.png"]
    files = sorted(k for k in keys if not k.endswith("/"))
    for whole in (f"s3://{bucket}", f"s3://{bucket}/"):
        assert [i.key for i in storage.list(whole)] == files
    assert list(storage.list(f"s3://{bucket}/missing")) == []


def test_listing_follows_continuation_pages(s3_endpoint: S3Endpoint) -> None:
    bucket = s3_endpoint.bucket()
    keys = [f"many/{n:03d}.png" for n in range(23)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda k: s3_endpoint.client.put_object(Bucket=bucket, Key=k), keys))
    storage = S3Storage(page_size=5)
    calls = []

    def count(**kwargs: object) -> None:
        calls.append(kwargs)

    storage.client.meta.events.register("before-call.s3.ListObjectsV2", count)
    try:
        listed = [item.key for item in storage.list(f"s3://{bucket}/many")]
    finally:
        storage.client.meta.events.unregister("before-call.s3.ListObjectsV2", count)
    assert listed == [k.removeprefix("many/") for k in keys]
    assert len(calls) == 5  # 23 keys, 5 a page


def test_hostile_keys_come_back_exactly_as_stored(s3_endpoint: S3Endpoint) -> None:
    bucket = s3_endpoint.bucket()
    names = [*HOSTILE, "sub//double.png", "./dot.png", "tab\there.png"]
    _put(s3_endpoint, bucket, {f"in/{name}": name.encode() for name in names})
    storage = S3Storage()
    listed = {item.key: storage.read(item.uri) for item in storage.list(f"s3://{bucket}/in")}
    assert listed == {name: name.encode() for name in names}


def test_join_keeps_every_key_under_its_base() -> None:
    storage = S3Storage()
    assert (
        storage.join("s3://b/runs/x/", "records", "a.parquet") == "s3://b/runs/x/records/a.parquet"
    )
    assert storage.join("s3://b", "exports/masks", "l.txt") == "s3://b/exports/masks/l.txt"
    for bad in ("..", "a/../b", "/abs", "a//b", "."):
        with pytest.raises(ValueError, match="refusing to join"):
            storage.join("s3://b/runs/x", bad)
    assert split_uri("s3://b/in//a/../x.png") == ("b", "in//a/../x.png")
    for uri in ("s3://", "s3:///key", "/local/path"):
        with pytest.raises(StorageError):
            split_uri(uri)


def test_errors_name_the_uri_and_the_reason(s3_endpoint: S3Endpoint) -> None:
    bucket = s3_endpoint.bucket()
    storage = S3Storage()
    missing = f"s3://{bucket}/nope.png"
    with pytest.raises(StorageError, match=re.escape(f"{missing}: cannot read (NoSuchKey)")):
        storage.read(missing)
    gone = "s3://no-such-bucket-prelabel/x"
    with pytest.raises(StorageError, match=re.escape(f"{gone}/a.png: cannot read (NoSuchBucket)")):
        storage.read(f"{gone}/a.png")
    with pytest.raises(StorageError, match=re.escape(f"{gone}: cannot list (NoSuchBucket)")):
        list(storage.list(gone))
    with pytest.raises(StorageError, match=re.escape(f"{gone}/a: cannot write (NoSuchBucket)")):
        storage.write_atomic(f"{gone}/a", b"x")
    with pytest.raises(
        StorageError, match=re.escape(f"{gone}: bucket 'no-such-bucket-prelabel' is not usable")
    ):
        storage.ensure_writable(gone)


def test_access_denied_is_a_storage_error(s3_endpoint: S3Endpoint, fault_proxy: MakeProxy) -> None:
    bucket = s3_endpoint.bucket()
    _put(s3_endpoint, bucket, {"secret/a.png": b"x"})
    proxy = fault_proxy(fail_share=0, delay_share=0, deny=lambda m, path: "/secret" in path)
    storage = S3Storage(S3Settings(endpoint_url=proxy.url))
    uri = f"s3://{bucket}/secret/a.png"
    with pytest.raises(StorageError, match=re.escape(f"{uri}: cannot read (AccessDenied)")):
        storage.read(uri)
    storage.ensure_writable(f"s3://{bucket}/secret")  # the bucket is there; writes are not
    with pytest.raises(StorageError, match=re.escape(f"{uri}: cannot write (AccessDenied)")):
        storage.write_if(uri, b"x", match=None)


def test_throttling_past_the_retries_is_a_storage_error(
    s3_endpoint: S3Endpoint, fault_proxy: MakeProxy
) -> None:
    bucket = s3_endpoint.bucket()
    _put(s3_endpoint, bucket, {"a.png": b"x"})
    proxy = fault_proxy(fail_share=1, delay_share=0, max_streak=10**9, statuses=(503,))
    storage = S3Storage(S3Settings(endpoint_url=proxy.url, max_attempts=2))
    uri = f"s3://{bucket}/a.png"
    with pytest.raises(StorageError, match=re.escape(f"{uri}: cannot read (SlowDown after 2 ")):
        storage.read(uri)
    assert proxy.failed == 2


def test_an_unreachable_endpoint_is_a_storage_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again before use: nothing listens there
    storage = S3Storage(S3Settings(endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1))
    with pytest.raises(StorageError, match=r"s3://b/a.png: cannot read \(Could not connect"):
        storage.read("s3://b/a.png")


def test_retries_through_a_faulty_proxy_lose_nothing(
    s3_endpoint: S3Endpoint, fault_proxy: MakeProxy
) -> None:
    bucket = s3_endpoint.bucket()
    proxy = fault_proxy()
    storage = S3Storage(S3Settings(endpoint_url=proxy.url), page_size=4)
    objects = {f"in/{n:02d} {HOSTILE[n % len(HOSTILE)]}": bytes([n]) * n for n in range(30)}
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda kv: storage.write_atomic(f"s3://{bucket}/{kv[0]}", kv[1]), objects.items()
            )
        )
        listed = list(storage.list(f"s3://{bucket}/in"))
        data = pool.map(storage.read, [i.uri for i in listed])
        read = dict(zip([i.key for i in listed], data, strict=True))
    assert read == {key.removeprefix("in/"): data for key, data in objects.items()}
    assert sorted(s3_endpoint.keys(bucket)) == sorted(objects)  # nothing extra, nothing lost
    for key, data in objects.items():  # what the server holds, read past the proxy
        body = s3_endpoint.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert body == data
    assert proxy.failed > 5 and proxy.delayed > 5


# -- settings and credentials -------------------------------------------------------------------


def test_settings_and_environment_reach_the_client(
    s3_endpoint: S3Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = S3Settings(
        endpoint_url="http://127.0.0.1:9",
        region="eu-west-3",
        addressing_style="path",
        max_pool_connections=3,
        connect_timeout=2,
        read_timeout=7,
        max_attempts=4,
    )
    client = S3Storage(settings).client
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
    assert client.meta.region_name == "eu-west-3"
    config = client.meta.config
    assert config.s3["addressing_style"] == "path"
    assert (config.max_pool_connections, config.connect_timeout, config.read_timeout) == (3, 2, 7)
    assert config.retries == {"mode": "standard", "total_max_attempts": 4}  # first try included
    assert S3Storage(settings).client is client  # one client per process and settings

    run = RunConfig(source="s3://b/in", out="s3://b/out", workers=24)
    sized = storage_for(run.source, run)
    assert isinstance(sized, S3Storage)
    assert sized.client.meta.config.max_pool_connections >= 24  # a connection per reader
    assert sized.client.meta.endpoint_url == s3_endpoint.url  # from AWS_ENDPOINT_URL_S3
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8")
    assert S3Storage().client.meta.endpoint_url == "http://127.0.0.1:8"


def test_credentials_never_enter_the_config() -> None:
    assert not {
        name for name in S3Settings.model_fields if re.search("key|secret|token|pass", name)
    }
    with pytest.raises(ValidationError) as refused:
        RunConfig(source="s3://b/in", out="s3://b/o", s3={"endpoint_url": "http://ak:hunter2@h"})
    assert "must not hold credentials" in str(refused.value)
    assert "hunter2" not in str(refused.value) and "ak:" not in str(refused.value)
    with pytest.raises(ValidationError):
        RunConfig(source="s3://b/in", out="s3://b/o", s3={"aws_secret_access_key": "x"})


# -- whole runs ---------------------------------------------------------------------------------


def _png(seed: int, height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(next(scenes(seed, 1, height=height, width=width)).image).save(buffer, "PNG")
    return buffer.getvalue()


IMAGES = {
    "scene 0.png": _png(200, 48, 64),
    "scene 1.png": _png(201, 64, 48),
    "nested/scene 2.png": _png(202, 40, 56),
    "nested/deeper/scene 3.png": _png(203, 48, 64),
    "scene 4.png": _png(204, 33, 45),
}


def _config(source: str, out: str) -> RunConfig:
    return RunConfig(source=source, out=out, device="cpu", shard_size=2, batch_size=2)


def _tables(out: str) -> tuple[pa.Table, pa.Table]:
    return latest(RunLayout(storage_for(out), out))


def _comparable(images: pa.Table) -> pa.Table:
    return images.drop_columns([*TIMINGS, "uri", "etag", "shard"])


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[pa.Table, pa.Table]:
    folder = tmp_path_factory.mktemp("images")
    for key, data in IMAGES.items():
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / key).write_bytes(data)
    out = tmp_path_factory.mktemp("runs") / "local"
    annotate(_config(str(folder), str(out)))
    return _tables(str(out))


@pytest.fixture(scope="module")
def source_bucket(s3_endpoint: S3Endpoint) -> str:
    bucket = s3_endpoint.bucket()
    _put(s3_endpoint, bucket, {f"in/{key}": data for key, data in IMAGES.items()})
    return bucket


@pytest.fixture(scope="module")
def s3_run(source_bucket: str) -> tuple[str, RunSummary]:
    out = f"s3://{source_bucket}/runs/x"
    return out, annotate(_config(f"s3://{source_bucket}/in", out))


def test_a_run_from_s3_to_s3_gives_the_records_of_a_local_run(
    source_bucket: str, s3_run: tuple[str, RunSummary], local_run: tuple[pa.Table, pa.Table]
) -> None:
    out, summary = s3_run
    images, regions = _tables(out)
    local_images, local_regions = local_run
    assert summary.labeled == len(IMAGES) and not summary.failed
    assert images.column("key").to_pylist() == sorted(IMAGES)
    uris = [f"s3://{source_bucket}/in/{key}" for key in sorted(IMAGES)]
    assert images.column("uri").to_pylist() == uris
    assert _comparable(images).equals(_comparable(local_images))
    assert regions.num_rows > len(IMAGES)
    assert regions.equals(local_regions)


@pytest.mark.parametrize("mix", ["s3-to-local", "local-to-s3"])
def test_any_mix_of_local_and_s3_gives_the_same_records(
    mix: str,
    s3_endpoint: S3Endpoint,
    source_bucket: str,
    local_run: tuple[pa.Table, pa.Table],
    tmp_path: Path,
) -> None:
    if mix == "s3-to-local":
        source, out = f"s3://{source_bucket}/in", str(tmp_path / "run")
    else:
        for key, data in IMAGES.items():
            (tmp_path / "in" / key).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "in" / key).write_bytes(data)
        source, out = str(tmp_path / "in"), f"s3://{s3_endpoint.bucket()}/runs/mixed"
    annotate(_config(source, out))
    images, regions = _tables(out)
    assert _comparable(images).equals(_comparable(local_run[0]))
    assert regions.equals(local_run[1])


def test_no_credential_reaches_the_run_folder_or_the_logs(
    s3_endpoint: S3Endpoint, source_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    out = f"s3://{source_bucket}/runs/secrets"
    with caplog.at_level(logging.DEBUG):
        annotate(_config(f"s3://{source_bucket}/in", out))
    assert caplog.records  # botocore did log, at debug level
    secret = s3_endpoint.secret_access_key
    assert secret not in caplog.text
    manifest = S3Storage().read(f"{out}/run.json").decode()
    assert json.loads(manifest)["config"]["s3"]["endpoint_url"] is None
    for key in s3_endpoint.keys(source_bucket):
        if key.startswith("runs/secrets/"):
            data = s3_endpoint.client.get_object(Bucket=source_bucket, Key=key)["Body"].read()
            assert secret.encode() not in data and s3_endpoint.access_key_id.encode() not in data


_RUN_FILES = re.compile(
    r"run\.json|index\.parquet|exports/coco\.json|(images|records)/shard-\d{4}-\d{5}\.parquet"
)


def test_hostile_keys_are_labeled_and_nothing_lands_outside_the_run(
    s3_endpoint: S3Endpoint, fault_proxy: MakeProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once directly, once through the faulty proxy: the same records, all inside the run."""
    bucket = s3_endpoint.bucket()
    source = {name: _png(300 + n, 40, 48) for n, name in enumerate(HOSTILE)}
    source["sub//broken.png"] = b"\x89PNG\r\n\x1a\n not really"
    _put(s3_endpoint, bucket, {f"in/{name}": data for name, data in source.items()})
    runs = {}
    for name in ("direct", "faulty"):
        if name == "faulty":
            proxy = fault_proxy(seed=3)
            monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        out = f"s3://{bucket}/runs/{name}"
        summary = annotate(_config(f"s3://{bucket}/in", out))
        monkeypatch.undo()
        images, regions = runs[name] = _tables(out)
        rows = {row["key"]: row for row in images.to_pylist()}
        assert set(rows) == set(source)  # every key labeled or reported, under its own name
        assert {k for k, r in rows.items() if r["status"] == "ok"} == set(HOSTILE)
        for key in HOSTILE:  # each row holds the labels of the bytes stored under its key
            assert rows[key]["content_hash"] == hashlib.sha256(source[key]).hexdigest()
            assert rows[key]["uri"] == f"s3://{bucket}/in/{key}"
        broken = rows["sub//broken.png"]
        assert broken["status"] == "failed"
        assert broken["error"].startswith(f"s3://{bucket}/in/sub//broken.png: ")
        assert summary.failed == (("sub//broken.png", broken["error"]),)
        counts = collections.Counter(regions.column("image_id").to_pylist())
        assert sum(counts.values()) > 0
        assert all(counts[r["image_id"]] == r["region_count"] for r in rows.values())
    assert proxy.failed > 5
    (direct_images, direct_regions), (faulty_images, faulty_regions) = runs.values()
    assert faulty_images.drop_columns(TIMINGS).equals(direct_images.drop_columns(TIMINGS))
    assert faulty_regions.equals(direct_regions)
    keys = s3_endpoint.keys(bucket)
    assert sorted(k for k in keys if k.startswith("in/")) == sorted(f"in/{k}" for k in source)
    for key in keys:
        assert key.startswith("in/") or _RUN_FILES.fullmatch(key.split("/", 2)[2]), key
        assert key.startswith(("in/", "runs/direct/", "runs/faulty/")), key


def test_a_run_through_a_faulty_proxy_loses_nothing(
    s3_endpoint: S3Endpoint,
    source_bucket: str,
    s3_run: tuple[str, RunSummary],
    monkeypatch: pytest.MonkeyPatch,
    fault_proxy: MakeProxy,
) -> None:
    denied = f"/{source_bucket}/in/denied.png"
    _put(s3_endpoint, source_bucket, {"in/denied.png": IMAGES["scene 0.png"]})
    out = f"s3://{source_bucket}/runs/faulty"
    try:
        proxy = fault_proxy(seed=7, deny=lambda method, path: method == "GET" and path == denied)
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)  # as a user would point boto3
        summary = annotate(_config(f"s3://{source_bucket}/in", out))
    finally:
        monkeypatch.undo()
        s3_endpoint.client.delete_object(Bucket=source_bucket, Key="in/denied.png")
    assert proxy.failed > 5 and proxy.delayed > 5
    images, regions = _tables(out)
    reported = images.filter(pc.equal(images.column("key"), "denied.png")).to_pylist()
    assert len(reported) == 1 and reported[0]["status"] == "failed" and reported[0]["retryable"]
    assert f"s3://{source_bucket}/in/denied.png: cannot read (AccessDenied)" == reported[0]["error"]
    assert summary.failed == (("denied.png", reported[0]["error"]),)
    labeled = images.filter(pc.not_equal(images.column("key"), "denied.png"))
    plain_images, plain_regions = _tables(s3_run[0])
    assert _comparable(labeled).equals(_comparable(plain_images))
    assert regions.equals(plain_regions)
