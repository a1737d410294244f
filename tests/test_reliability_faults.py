"""Reliability: the API and the network misbehaving, over real HTTP.

Promises proved here (see docs/reliability.md):

* a 429 with ``Retry-After`` is survived on every endpoint the client calls, and the wait is the
  server's, not our backoff;
* a download survives the API refusing connections for a while, before the body and in the
  middle of it (resumed with ``Range``), and produces a byte-identical file;
* a server slower than the timeout makes a download fail cleanly (nothing at the destination),
  and a server that stalls mid-body is resumed, not waited on forever.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dagster_together.client import APITimeoutError, TogetherClient
from dagster_together.emulator import Emulator
from tests.helpers import content_calls, random_jsonl, sha256_hex, write_requests

MiB = 1024 * 1024
RETRY_AFTER = 0.1  # seconds the server asks for; the client's own backoff is 1000x shorter


def _fast_client(emu: Emulator, api_key: str, **kwargs: Any) -> TogetherClient:
    kwargs.setdefault("timeout", 5)
    kwargs.setdefault("max_retries", 2)
    kwargs.setdefault("backoff_base", 0.0001)
    kwargs.setdefault("backoff_max", 0.0001)
    return TogetherClient(api_key, emu.base_url, **kwargs)


# ---------------------------------------------------------------------------------------------
# 429 + Retry-After on every endpoint
# ---------------------------------------------------------------------------------------------
@dataclass
class Ctx:
    client: TogetherClient
    emu: Emulator
    tmp: Path
    file_id: str  # an uploaded input file
    spare_file_id: str  # a file that may be deleted
    batch_id: str  # an IN_PROGRESS batch


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    path: str  # regex on the request path, as the emulator records it
    call: Callable[[Ctx], Any]


def _upload_fresh(ctx: Ctx) -> Any:
    # New bytes, so the upload goes through all three steps (no 409 shortcut).
    return ctx.client.files.upload(write_requests(ctx.tmp / "fresh.jsonl", n=7))


ENDPOINTS = [
    Endpoint("files.upload: POST /files", "POST", r"^/v1/files$", _upload_fresh),
    Endpoint("files.upload: PUT presigned URL", "PUT", r"^/_upload/", _upload_fresh),
    Endpoint("files.upload: POST preprocess", "POST", r"/preprocess$", _upload_fresh),
    Endpoint("files.list", "GET", r"^/v1/files$", lambda c: c.client.files.list()),
    Endpoint(
        "files.retrieve", "GET", r"^/v1/files/[^/]+$", lambda c: c.client.files.retrieve(c.file_id)
    ),
    Endpoint(
        "files.delete",
        "DELETE",
        r"^/v1/files/[^/]+$",
        lambda c: c.client.files.delete(c.spare_file_id),
    ),
    Endpoint(
        "files.retrieve_content",
        "GET",
        r"/content$",
        lambda c: c.client.files.retrieve_content(c.file_id, output=c.tmp / "content.jsonl"),
    ),
    Endpoint(
        "batches.create_batch",
        "POST",
        r"^/v1/batches$",
        lambda c: c.client.batches.create_batch(c.file_id),
    ),
    Endpoint(
        "batches.get_batch",
        "GET",
        r"^/v1/batches/[^/]+$",
        lambda c: c.client.batches.get_batch(c.batch_id),
    ),
    Endpoint(
        "batches.list_batches", "GET", r"^/v1/batches$", lambda c: c.client.batches.list_batches()
    ),
    Endpoint(
        "batches.cancel_batch",
        "POST",
        r"/cancel$",
        lambda c: c.client.batches.cancel_batch(c.batch_id),
    ),
]


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[e.name for e in ENDPOINTS])
def test_429_with_retry_after_is_survived_on_every_endpoint(
    slow_emu: Emulator,
    api_key: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    endpoint: Endpoint,
) -> None:
    """Promise: a 429 with Retry-After on any endpoint is waited out (the server's delay, not
    our backoff) and the call then succeeds; nothing is sent twice that should not be."""
    with _fast_client(slow_emu, api_key) as client:
        uploaded = client.files.upload(write_requests(tmp_path / "in.jsonl"))
        spare = slow_emu.add_file(b'{"x": 1}\n', purpose="batch-api")
        batch = client.batches.create_batch(uploaded.id)
        ctx = Ctx(client, slow_emu, tmp_path, uploaded.id, spare, batch.id)
        slow_emu.clear_requests()
        slow_emu.add_fault(
            method=endpoint.method, path=endpoint.path, status=429, retry_after=RETRY_AFTER
        )
        caplog.set_level(logging.WARNING, logger="dagster_together.client")
        started = time.monotonic()
        endpoint.call(ctx)
        elapsed = time.monotonic() - started

    pattern = re.compile(endpoint.path)
    hits = [
        r.status
        for r in slow_emu.requests
        if r.method == endpoint.method and pattern.search(r.path)
    ]
    assert hits[0] == 429 and len(hits) == 2 and 200 <= hits[1] < 400, hits
    assert elapsed >= RETRY_AFTER * 0.95, elapsed  # the server's wait was honoured
    waits = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(waits) == 1 and "429" in waits[0] and f"retrying in {RETRY_AFTER:.2f} s" in waits[0]
    if endpoint.name == "batches.create_batch":
        assert len(slow_emu.batches()) == 2  # the fixture's batch and exactly one new one


# ---------------------------------------------------------------------------------------------
# Connection refused for a while, during a download
# ---------------------------------------------------------------------------------------------
def test_download_waits_out_connection_refused_before_the_body(
    emulator: Any, api_key: str, tmp_path: Path
) -> None:
    """Promise: the API refusing connections for a while (an outage, a restart) does not fail
    a download; it starts once the API is back and the file is byte-identical."""
    data = random_jsonl(3 * MiB + 11)
    file_id = emulator.add_file(data)
    with TogetherClient(
        api_key, emulator.base_url, max_retries=10, backoff_base=0.04, backoff_max=0.08
    ) as client:
        client.files.list()  # a pooled keep-alive connection that the outage cuts
        emulator.stop()
        restart = threading.Timer(0.25, emulator.start)
        restart.start()
        try:
            started = time.monotonic()
            result = client.files.retrieve_content(file_id, output=tmp_path / "out.jsonl")
            assert time.monotonic() - started >= 0.2
        finally:
            restart.join()
    assert result.size == len(data)
    assert sha256_hex((tmp_path / "out.jsonl").read_bytes()) == sha256_hex(data)
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_download_resumes_after_connection_refused_mid_body(
    emulator: Any, api_key: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Promise: a connection cut mid-body followed by the API refusing connections for a while
    is resumed from the bytes already written (Range), not restarted, and the file is whole."""
    data = random_jsonl(4 * MiB + 5)
    file_id = emulator.add_file(data)
    emulator.add_fault(path=r"/content$", kind="drop", after_bytes=1_500_000, times=1)
    caplog.set_level(logging.WARNING, logger="dagster_together.client")
    restarts: list[threading.Timer] = []
    with TogetherClient(
        api_key, emulator.base_url, max_retries=10, backoff_base=0.02, backoff_max=0.08
    ) as client:
        real_sleep = client.transport._sleep  # the transport's documented seam for tests

        def outage_on_first_retry(seconds: float) -> None:
            if not restarts:  # the body was just cut: now the API goes down for 0.25 s
                emulator.stop()
                restarts.append(threading.Timer(0.25, emulator.start))
                restarts[0].start()
            real_sleep(seconds)

        client.transport._sleep = outage_on_first_retry
        try:
            result = client.files.retrieve_content(file_id, output=tmp_path / "out.jsonl")
        finally:
            for timer in restarts:
                timer.join()
    assert result.size == len(data)
    assert sha256_hex((tmp_path / "out.jsonl").read_bytes()) == sha256_hex(data)
    calls = content_calls(emulator)
    assert [c.status for c in calls] == [200, 206]
    assert calls[1].headers.get("range") == "bytes=1500000-"  # resumed, not restarted
    refused = [r.getMessage() for r in caplog.records if "ConnectError" in r.getMessage()]
    assert refused, "expected the resume to meet connection refused at least once"


# ---------------------------------------------------------------------------------------------
# A slow server
# ---------------------------------------------------------------------------------------------
def test_download_from_a_server_slower_than_the_timeout(
    emulator: Any, api_key: str, tmp_path: Path
) -> None:
    """Promise: a server that does not answer within the timeout gives a clear timeout error
    in bounded time, leaves nothing at the destination, and a retry once it is fast succeeds."""
    data = random_jsonl(MiB)
    file_id = emulator.add_file(data)
    emulator.add_fault(path=r"/content$", kind="delay", seconds=1.0, times=None)
    out = tmp_path / "out.jsonl"
    with TogetherClient(
        api_key, emulator.base_url, timeout=0.2, max_retries=1, backoff_base=0.01
    ) as client:
        started = time.monotonic()
        with pytest.raises(APITimeoutError, match=r"within the 0.2 s timeout after 1 retries"):
            client.files.retrieve_content(file_id, output=out)
        assert time.monotonic() - started < 1.5  # two attempts of 0.2 s, not two of 1 s
        assert os.listdir(tmp_path) == []  # neither the output nor a temporary file

        emulator.clear_faults()
        emulator.add_fault(path=r"/content$", kind="delay", seconds=1.0, times=1)
        result = client.files.retrieve_content(file_id, output=out)
    assert result.size == len(data) and sha256_hex(out.read_bytes()) == sha256_hex(data)
    assert [c.status for c in content_calls(emulator)][-2:] == [200, 200]


class _StallingServer(ThreadingHTTPServer):
    """Real HTTP that the emulator cannot give: the first answer sends headers and half of the
    body, then stalls (a hung connection, not a closed one); a ranged request gets the rest."""

    daemon_threads = True

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.release = threading.Event()
        self.seen: list[str | None] = []
        super().__init__(("127.0.0.1", 0), _StallingHandler)


class _StallingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _StallingServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        data, ranged = self.server.data, self.headers.get("Range")
        self.server.seen.append(ranged)
        if ranged is None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.server.release.wait(10)  # hang, well past the client's timeout
            self.close_connection = True
            return
        start = int(ranged.removeprefix("bytes=").split("-")[0])
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


def test_a_download_that_stalls_mid_body_is_resumed(api_key: str, tmp_path: Path) -> None:
    """Promise: a server that stops sending in the middle of a body is given up on after the
    timeout (not waited on forever) and the download resumes where it stopped."""
    data = random_jsonl(2 * MiB + 3)
    server = _StallingServer(data)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/v1"
        with TogetherClient(api_key, base, timeout=0.3, max_retries=2, backoff_base=0.01) as client:
            started = time.monotonic()
            result = client.files.retrieve_content("file-stall", output=tmp_path / "o.jsonl")
            assert time.monotonic() - started < 5
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert result.size == len(data)
    assert sha256_hex((tmp_path / "o.jsonl").read_bytes()) == sha256_hex(data)
    assert server.seen == [None, f"bytes={len(data) // 2}-"]
