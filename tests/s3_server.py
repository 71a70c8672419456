"""An S3 endpoint on loopback for tests: moto's server over real HTTP, and a proxy that breaks it.

Register with ``pytest_plugins = ["tests.s3_server"]`` (and import from it only for type
checking, or pytest cannot rewrite it). The ``s3_endpoint`` fixture starts one
moto server for the session and points boto3 at it through the standard variables
(``AWS_ENDPOINT_URL_S3``, fake keys, a region), the way a user's environment would.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

ACCESS_KEY_ID = "AKIAPRELABELTESTKEY0"
SECRET_ACCESS_KEY = "prelabel-test-secret-" + uuid.uuid4().hex  # never to be seen in outputs


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    client: Any  # a plain boto3 client, for arranging and inspecting buckets behind the code
    access_key_id: str = ACCESS_KEY_ID
    secret_access_key: str = SECRET_ACCESS_KEY

    def bucket(self) -> str:
        """A new empty bucket, so tests never see each other's keys."""
        name = f"test-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [item["Key"] for page in pages for item in page.get("Contents", ())]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[S3Endpoint]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL_S3", url)
        env.delenv("AWS_ENDPOINT_URL", raising=False)
        env.delenv("AWS_PROFILE", raising=False)
        env.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        env.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        env.delenv("AWS_SESSION_TOKEN", raising=False)
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_CONFIG_FILE", "/dev/null")  # a developer's ~/.aws stays out of it
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        yield S3Endpoint(url, boto3.session.Session().client("s3", endpoint_url=url))
    server.stop()


DROP = 0  # a "status" that answers nothing: the connection is closed instead


class FaultProxy:
    """A loopback HTTP proxy in front of ``upstream`` that fails a share of requests with one of
    ``statuses`` (``DROP``: the connection closed with no reply) and delays others. A share
    ``after`` of the failures happen after the server acted, as when a reply is lost. The same
    request fails at most ``max_streak`` times in a row, so a client that retries more often
    than that always gets through; only requests ``faulty`` picks may fail (all by default);
    ``deny`` answers 403 AccessDenied to the requests it picks, every time."""

    def __init__(
        self,
        upstream: str,
        *,
        fail_share: float = 0.25,
        delay_share: float = 0.25,
        max_delay: float = 0.15,
        max_streak: int = 2,
        seed: int = 0,
        statuses: tuple[int, ...] = (500, 503),
        after: float = 0.5,
        faulty: Callable[[str, str], bool] = lambda method, path: True,
        deny: Callable[[str, str], bool] = lambda method, path: False,
    ) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.fail_share, self.delay_share, self.max_delay = fail_share, delay_share, max_delay
        self.max_streak, self.statuses, self.deny = max_streak, statuses, deny
        self.after, self.faulty = after, faulty
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.streaks: dict[tuple[str, str], int] = {}
        self.failed = self.delayed = self.forwarded = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def decide(self, method: str, path: str) -> tuple[int | None, bool, float]:
        """(status to fail with or None, fail after forwarding?, seconds to wait first)."""
        with self.lock:
            if self.deny(method, path):
                return 403, False, 0.0
            request = (method, path)
            streak = self.streaks.get(request, 0)
            wait = 0.0
            if self.random.random() < self.delay_share:
                wait = self.random.uniform(0, self.max_delay)
                self.delayed += 1
            faulty = streak < self.max_streak and self.faulty(method, path)
            if faulty and self.random.random() < self.fail_share:
                self.streaks[request] = streak + 1
                self.failed += 1
                return self.random.choice(self.statuses), self.random.random() < self.after, wait
            self.streaks[request] = 0
            self.forwarded += 1
            return None, False, wait


_ERRORS = {500: "InternalError", 503: "SlowDown", 403: "AccessDenied"}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "expect"}


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the tests count what happened instead."""

        def _relay(self) -> None:
            body = self._body()
            status, after, wait = proxy.decide(self.command, self.path)
            time.sleep(wait)
            if status is None:
                self._send(*self._forward(body))
                return
            if after:
                self._forward(body)  # the server acts, the client never hears of it
            if status == DROP:
                self.close_connection = True
                return
            code = _ERRORS[status]
            error = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
            self._send(status, [("Content-Type", "application/xml")], error)

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
            upstream = http.client.HTTPConnection(proxy.upstream, timeout=30)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
                if self.command == "HEAD":  # no body, but the length of the one it describes
                    length = response.getheader("Content-Length")
                    kept += [("Content-Length", length)] if length else []
                return response.status, kept, data
            finally:
                upstream.close()

        def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay  # noqa: N815

    return Handler


@pytest.fixture
def fault_proxy(s3_endpoint: S3Endpoint) -> Iterator[Callable[..., FaultProxy]]:
    """``fault_proxy(**options)``: a started proxy in front of the session's server, stopped
    when the test ends."""
    with contextlib.ExitStack() as stack:
        yield lambda **options: stack.enter_context(FaultProxy(s3_endpoint.url, **options))
