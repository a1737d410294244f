"""Reliability: the storage side failing mid-write.

Promises proved here (see docs/reliability.md):

* S3 failing in the middle of a multipart upload (a real S3-protocol fault: a proxy in front of
  the moto server answers 500 to one part) leaves no object and no open multipart upload, raises
  an error naming the S3 operation, and the same call succeeds once S3 is healthy again;
* a full local disk (a real 1 MiB tmpfs, mounted for the test) leaves no partial file and no
  temporary file behind, for a download, for the results Parquet and for the copy of a batch's
  input, and the retry after space is freed produces the whole file;
* S3 refusing a part while a batch's input is copied to storage leaves no object and no open
  multipart upload.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import random
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fsspec
import pytest

import dagster_together.client.download as download
from dagster_together.client import TogetherClient
from dagster_together.results import join_results
from dagster_together.storage import BatchStorageLayout
from tests.helpers import fast_client, open_multipart_uploads, random_jsonl, sha256_hex

MiB = 1024 * 1024


@pytest.fixture
def client(emulator: Any, api_key: str) -> Iterator[TogetherClient]:
    with fast_client(emulator, api_key, timeout=10, max_retries=2) as c:
        yield c


# ---------------------------------------------------------------------------------------------
# S3 failing mid multipart upload: a fault proxy in front of the moto server
# ---------------------------------------------------------------------------------------------
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "te", "upgrade"}
_INTERNAL_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message></Error>"
)


class S3FaultProxy(ThreadingHTTPServer):
    """Forwards every S3 request to the moto server, except those ``fail`` picks: those get
    S3's own ``500 InternalError`` answer and never reach moto."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.fail: Callable[[str, str], bool] | None = None
        self.seen: list[tuple[str, str, int]] = []  # (method, path?query, status)
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: S3FaultProxy

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self) -> None:
        body = self._body()
        fail = self.server.fail
        if fail is not None and fail(self.command, self.path):
            status, headers, data = 500, [("Content-Type", "application/xml")], _INTERNAL_ERROR
        else:
            conn = http.client.HTTPConnection(*self.server.upstream, timeout=30)
            try:
                sent = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                sent["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=sent)
                answer = conn.getresponse()
                status, data = answer.status, answer.read()
                headers = [
                    (k, v)
                    for k, v in answer.getheaders()
                    if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"
                ]
            finally:
                conn.close()
        self.server.seen.append((self.command, self.path, status))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


@pytest.fixture
def s3_proxy(s3_server: Any) -> Iterator[S3FaultProxy]:
    proxy = S3FaultProxy(s3_server.endpoint_url)
    thread = threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(5)


def _proxy_options(proxy: S3FaultProxy) -> dict[str, Any]:
    return {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": proxy.endpoint_url, "region_name": "us-east-1"},
        # One attempt per S3 call: the fault is persistent, botocore's retries would only wait.
        "config_kwargs": {"retries": {"mode": "standard", "total_max_attempts": 1}},
        "skip_instance_cache": True,
    }


def test_s3_failing_mid_multipart_upload_leaves_nothing_and_a_retry_succeeds(
    client: TogetherClient,
    emulator: Any,
    s3_server: Any,
    s3_bucket: str,
    s3_proxy: S3FaultProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Promise: S3 refusing a part in the middle of a multipart upload leaves no object and no
    open multipart upload at the destination, the error names the S3 failure, and the same
    download succeeds, byte-identical, once S3 is healthy."""
    # 5 MiB parts (S3's minimum): a 12 MiB file is a three-part upload; part 2 fails.
    monkeypatch.setattr(download, "REMOTE_BLOCK_SIZE", 5 * MiB)
    monkeypatch.setattr(download, "CHUNK_SIZE", 1 * MiB)
    data = random_jsonl(12 * MiB + 5)
    file_id = emulator.add_file(data)
    url = f"{s3_bucket}/batches/b1/output.jsonl"
    options = _proxy_options(s3_proxy)
    s3_proxy.fail = lambda method, path: method == "PUT" and "partNumber=2" in path

    with pytest.raises(OSError) as info:
        client.files.retrieve_content(file_id, output=url, storage_options=options)
    assert "InternalError" in str(info.value) or "internal error" in str(info.value).lower()

    calls = [(m, p.split("?")[1] if "?" in p else "", s) for m, p, s in s3_proxy.seen]
    parts = [(q, s) for m, q, s in calls if m == "PUT" and "partNumber=" in q]
    statuses = [s for _, s in parts]
    assert statuses[0] == 200 and statuses[1:] and set(statuses[1:]) == {500}  # part 2 refused
    assert any(m == "DELETE" and "uploadId=" in q and s == 204 for m, q, s in calls), calls
    direct = fsspec.filesystem("s3", **s3_server.storage_options)
    assert not direct.exists(url)
    assert direct.find(s3_bucket) == []
    assert open_multipart_uploads(s3_server, s3_bucket) == []  # aborted, not left to be billed

    s3_proxy.fail = None
    result = client.files.retrieve_content(file_id, output=url, storage_options=options)
    assert result.size == len(data)
    direct = fsspec.filesystem("s3", **s3_server.storage_options)
    assert sha256_hex(direct.cat(url)) == sha256_hex(data)
    assert direct.info(url)["ETag"].strip('"').endswith("-3")
    assert open_multipart_uploads(s3_server, s3_bucket) == []


def test_s3_failing_on_the_results_parquet_leaves_nothing_and_a_retry_succeeds(
    tmp_path: Path, s3_server: Any, s3_bucket: str, s3_proxy: S3FaultProxy
) -> None:
    """Promise: S3 refusing the results Parquet upload leaves no object at the destination
    (join_results publishes only a complete file) and the same join succeeds afterwards."""
    inputs, outputs = _join_files(tmp_path, n=50)
    destination = f"{s3_bucket}/results/batch_id=b1/part-0.parquet"
    options = _proxy_options(s3_proxy)
    s3_proxy.fail = lambda method, path: method == "PUT" and "part-0.parquet" in path
    with pytest.raises(OSError):
        join_results(
            inputs=str(inputs),
            outputs=[str(outputs)],
            destination=destination,
            storage_options=options,
        )
    direct = fsspec.filesystem("s3", **s3_server.storage_options)
    assert direct.find(s3_bucket) == []

    s3_proxy.fail = None
    summary = join_results(
        inputs=str(inputs), outputs=[str(outputs)], destination=destination, storage_options=options
    )
    assert summary.n_rows == 50 and summary.counts["succeeded"] == 50
    assert direct.exists(destination)


def test_s3_failing_mid_put_file_leaves_nothing_and_a_retry_succeeds(
    tmp_path: Path, s3_server: Any, s3_bucket: str, s3_proxy: S3FaultProxy
) -> None:
    """Promise: S3 refusing a part while a batch's input is copied to storage (the submit's
    ``put_file``) leaves no object and no open multipart upload, and the copy succeeds later."""
    data = random_jsonl(20 * MiB + 7)  # three 8 MiB parts; part 2 fails
    source = tmp_path / "requests.jsonl"
    source.write_bytes(data)
    layout = BatchStorageLayout(f"{s3_bucket}/store", _proxy_options(s3_proxy))
    location = layout.input_jsonl("b1")
    s3_proxy.fail = lambda method, path: method == "PUT" and "partNumber=2" in path
    with pytest.raises(OSError):
        layout.put_file(str(source), location)
    direct = fsspec.filesystem("s3", **s3_server.storage_options)
    assert direct.find(s3_bucket) == []
    assert open_multipart_uploads(s3_server, s3_bucket) == []  # aborted, not left to be billed

    s3_proxy.fail = None
    layout.put_file(str(source), location)
    direct = fsspec.filesystem("s3", **s3_server.storage_options)
    assert sha256_hex(direct.cat(location)) == sha256_hex(data)
    assert open_multipart_uploads(s3_server, s3_bucket) == []


# ---------------------------------------------------------------------------------------------
# A full local disk: a real 1 MiB tmpfs
# ---------------------------------------------------------------------------------------------
def _mount(path: Path, size: str, remount: bool = False) -> bool:
    options = f"remount,size={size}" if remount else f"size={size}"
    args = ["mount", "-o", options, str(path)] if remount else ["mount", "-t", "tmpfs"]
    if not remount:
        args += ["-o", options, "tmpfs", str(path)]
    try:
        done = subprocess.run(args, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path | None]:
    """A real 1 MiB tmpfs (needs root); None where mounting is not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount(disk, "1m"):
        yield None
        return
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=10, check=False)


class _FullDiskFile:
    """Fallback without root: a file object that fails like a full disk after 1 MiB."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._room = MiB

    def write(self, data: Any) -> int:
        if len(data) > self._room:
            self._handle.write(bytes(data[: self._room]))
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def test_full_local_disk_during_a_download_leaves_nothing(
    client: TogetherClient,
    emulator: Any,
    tmp_path: Path,
    tiny_disk: Path | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Promise: the disk filling up during a download raises ENOSPC, leaves neither the output
    nor a temporary file, and once there is room the same call writes the whole file."""
    data = random_jsonl(3 * MiB)
    file_id = emulator.add_file(data)
    disk = tiny_disk
    if disk is None:  # no root: the file object raises ENOSPC instead of the kernel
        disk = tmp_path / "disk"
        real_fdopen = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda *a, **k: _FullDiskFile(real_fdopen(*a, **k)))
    out = disk / "batches" / "b1" / "output.jsonl"

    with pytest.raises(OSError) as info:
        client.files.retrieve_content(file_id, output=out)
    assert info.value.errno == errno.ENOSPC
    assert [p for p in disk.rglob("*") if p.is_file()] == []  # no output, no .part file

    if tiny_disk is None:
        monkeypatch.undo()
    else:
        assert _mount(disk, "16m", remount=True)
    result = client.files.retrieve_content(file_id, output=out)
    assert result.size == len(data) and sha256_hex(out.read_bytes()) == sha256_hex(data)
    assert sorted(p.name for p in disk.rglob("*") if p.is_file()) == ["output.jsonl"]


def test_full_local_disk_during_put_file_leaves_nothing(
    tmp_path: Path, tiny_disk: Path | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise: the disk filling up while a batch's input is copied to local storage raises
    ENOSPC and leaves neither a partial input nor a temporary file; with room the copy works."""
    data = random_jsonl(3 * MiB, seed=2)
    source = tmp_path / "requests.jsonl"
    source.write_bytes(data)
    disk = tiny_disk
    if disk is None:  # no root: the file object raises ENOSPC instead of the kernel
        disk = tmp_path / "disk"
        real_fdopen = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda *a, **k: _FullDiskFile(real_fdopen(*a, **k)))
    layout = BatchStorageLayout(str(disk / "store"))
    location = layout.input_jsonl("b1")

    with pytest.raises(OSError) as info:
        layout.put_file(str(source), location)
    assert info.value.errno == errno.ENOSPC
    assert [p for p in disk.rglob("*") if p.is_file()] == []

    if tiny_disk is None:
        monkeypatch.undo()
    else:
        assert _mount(disk, "16m", remount=True)
    layout.put_file(str(source), location)
    assert Path(location).read_bytes() == data
    assert sorted(p.name for p in disk.rglob("*") if p.is_file()) == ["input.jsonl"]


def _join_files(tmp_path: Path, n: int) -> tuple[Path, Path]:
    """A request file and an output file of ``n`` answers, of random (incompressible) text."""
    rng = random.Random(7)
    inputs, outputs = tmp_path / "input.jsonl", tmp_path / "output.jsonl"
    with inputs.open("w") as ins, outputs.open("w") as outs:
        for i in range(n):
            prompt = f"{rng.getrandbits(4096):01024x}"
            body = {"model": "m", "messages": [{"role": "user", "content": prompt}]}
            ins.write(json.dumps({"custom_id": f"r{i}", "body": body}) + "\n")
            answer = {
                "choices": [
                    {
                        "message": {"role": "assistant", "content": f"{rng.getrandbits(4096):x}"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
                "model": "m",
            }
            line = {
                "id": f"br_{i}",
                "custom_id": f"r{i}",
                "response": {"status_code": 200, "request_id": f"q{i}", "body": answer},
            }
            outs.write(json.dumps(line) + "\n")
    return inputs, outputs


def test_full_local_disk_while_writing_results_leaves_nothing(
    tmp_path: Path, tiny_disk: Path | None
) -> None:
    """Promise: the disk filling up while the results Parquet is written raises ENOSPC, leaves
    no partial Parquet (nor its staging files), and the join succeeds once there is room."""
    if tiny_disk is None:
        pytest.skip("needs root to mount a 1 MiB tmpfs (pyarrow writes below Python's reach)")
    inputs, outputs = _join_files(tmp_path, n=1500)  # ~3 MB of Parquet, over the 1 MiB disk
    destination = tiny_disk / "results" / "batch_id=b1" / "part-0.parquet"
    with pytest.raises(OSError) as info:
        join_results(inputs=str(inputs), outputs=[str(outputs)], destination=str(destination))
    assert "No space left" in str(info.value) or getattr(info.value, "errno", None) == 28
    assert [p for p in tiny_disk.rglob("*") if p.is_file()] == []

    assert _mount(tiny_disk, "32m", remount=True)
    summary = join_results(inputs=str(inputs), outputs=[str(outputs)], destination=str(destination))
    assert summary.n_rows == 1500 and summary.counts["succeeded"] == 1500
    assert [p.name for p in tiny_disk.rglob("*") if p.is_file()] == ["part-0.parquet"]
