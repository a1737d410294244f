"""Files over real HTTP: the three-step upload, 409 dedupe, checks before sending, list/get/delete."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dagster_together.client import (
    FileResponse,
    InputFileNotFoundError,
    InvalidRequestFileError,
    NotFoundError,
    TogetherClient,
)
from tests.helpers import fast_client, write_requests


class RecordingTransport(httpx.HTTPTransport):
    """Real HTTP, plus a copy of every request's method, URL and headers as sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str, dict[str, str]]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, str(request.url), dict(request.headers)))
        return super().handle_request(request)


@pytest.fixture
def recorder() -> RecordingTransport:
    return RecordingTransport()


@pytest.fixture
def client(emulator: Any, api_key: str, recorder: RecordingTransport) -> Iterator[TogetherClient]:
    with fast_client(emulator, api_key, timeout=10, max_retries=3, http_transport=recorder) as c:
        yield c


def _write_requests(path: Path, n: int = 5) -> Path:
    return write_requests(
        path, n, model="meta-llama/Llama-3-8b-chat-hf", prompt="Say hello {i}", custom_id="req-{i}"
    )


def _sequence(emulator: Any) -> list[tuple[str, str, int]]:
    return [
        (r.method, re.sub(r"file-[0-9a-f-]+", "{id}", r.path), r.status) for r in emulator.requests
    ]


def test_upload_is_the_three_step_flow(
    client: TogetherClient, emulator: Any, tmp_path: Path, recorder: RecordingTransport
) -> None:
    path = _write_requests(tmp_path / "requests.jsonl")
    uploaded = client.files.upload(path)
    assert isinstance(uploaded, FileResponse)
    assert uploaded.id.startswith("file-")
    assert uploaded.filename == "requests.jsonl"
    assert uploaded.bytes == path.stat().st_size
    assert uploaded.purpose == "batch-api"
    assert uploaded.processed is True
    assert _sequence(emulator) == [
        ("POST", "/v1/files", 302),
        ("PUT", "/_upload/{id}", 200),
        ("POST", "/v1/files/{id}/preprocess", 200),
    ]
    post, put, preprocess = recorder.sent
    # Step 1: multipart form fields, sha256 checksum.
    assert post[2]["content-type"].startswith("multipart/form-data; boundary=")
    assert post[2]["authorization"].startswith("Bearer ")
    # Step 2: raw bytes with a Content-Length, and the API key is NOT sent to storage.
    assert "authorization" not in put[2]
    assert put[2]["content-length"] == str(path.stat().st_size)
    assert "transfer-encoding" not in put[2]
    assert "X-Amz-Signature=" in put[1]
    assert preprocess[2]["authorization"].startswith("Bearer ")
    # The server stored exactly our bytes.
    assert client.files.retrieve(uploaded.id).bytes == path.stat().st_size


def test_upload_sends_the_form_fields(api_key: str, tmp_path: Path) -> None:
    path = _write_requests(tmp_path / "My Requests.jsonl")
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/files":
            bodies.append(request.read())
            return httpx.Response(
                302,
                headers={"Location": "/_upload/f?sig=x", "X-Together-File-Id": "file-1"},
            )
        if request.method == "PUT":
            assert request.url.path == "/_upload/f"  # a relative Location is resolved
            assert b"".join(request.stream) == path.read_bytes()
            return httpx.Response(200)
        return httpx.Response(200, json={"id": "file-1", "object": "file", "filename": "x"})

    with TogetherClient(api_key, "http://t/v1", http_transport=httpx.MockTransport(handler)) as c:
        assert c.files.upload(path, check=False).id == "file-1"
    body = bodies[0].decode()
    fields = dict(re.findall(r'name="([^"]+)"\r\n\r\n([^\r]*)\r\n', body))
    assert fields == {
        "purpose": "batch-api",
        "file_name": "My Requests.jsonl",
        "file_type": "jsonl",
        "checksum": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def test_same_bytes_again_returns_the_existing_file(
    client: TogetherClient, emulator: Any, tmp_path: Path
) -> None:
    path = _write_requests(tmp_path / "a.jsonl")
    first = client.files.upload(path, check=False)
    emulator.clear_requests()
    copy = tmp_path / "b.jsonl"
    copy.write_bytes(path.read_bytes())
    again = client.files.upload(copy, check=False)
    assert again.id == first.id
    assert _sequence(emulator) == [("POST", "/v1/files", 409), ("GET", "/v1/files/{id}", 200)]


def test_missing_file_fails_before_any_request(
    client: TogetherClient, emulator: Any, tmp_path: Path
) -> None:
    for check in (True, False):
        with pytest.raises(InputFileNotFoundError, match="no such file. Nothing was sent"):
            client.files.upload(tmp_path / "nope.jsonl", check=check)
    with pytest.raises(FileNotFoundError):  # also a FileNotFoundError, for plain Python callers
        client.files.upload(tmp_path)
    assert emulator.requests == []


def test_check_rejects_a_bad_file_before_any_request(
    client: TogetherClient, emulator: Any, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"custom_id": "a", "body": {"model": "m"}}\nnot json\n')
    with pytest.raises(InvalidRequestFileError):
        client.files.upload(bad)
    assert emulator.requests == []


def test_check_uses_the_validators_sha256(
    client: TogetherClient, emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster_together.requests as requests_module

    calls: list[tuple[Any, str]] = []
    real = requests_module.check_request_file

    def spy(path: Any, *, purpose: str) -> Any:
        calls.append((path, purpose))
        return real(path, purpose=purpose)

    monkeypatch.setattr(requests_module, "check_request_file", spy)
    path = _write_requests(tmp_path / "ok.jsonl")
    client.files.upload(path)
    assert calls == [(path, "batch-api")]
    assert [r.method for r in emulator.requests] == ["POST", "PUT", "POST"]


def test_a_known_checksum_is_sent_without_hashing_again(
    client: TogetherClient, emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster_together.client.files as files_module

    path = _write_requests(tmp_path / "known.jsonl")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    first = client.files.upload(path, check=False, checksum=digest)

    def no_second_pass(_: Any) -> str:
        raise AssertionError("the file was hashed although its checksum was given")

    monkeypatch.setattr(files_module, "_sha256_of", no_second_pass)
    emulator.clear_requests()
    # The given checksum is what Together dedupes on: the same bytes again -> the same file.
    again = client.files.upload(path, check=False, checksum=digest)
    assert again.id == first.id
    assert _sequence(emulator) == [("POST", "/v1/files", 409), ("GET", "/v1/files/{id}", 200)]


def test_put_is_retried_with_a_fresh_body(
    client: TogetherClient, emulator: Any, tmp_path: Path
) -> None:
    emulator.add_fault(method="PUT", path=r"^/_upload/", status=503, times=2)
    path = _write_requests(tmp_path / "r.jsonl", n=50)
    uploaded = client.files.upload(path, check=False)
    assert [s for m, _, s in _sequence(emulator) if m == "PUT"] == [503, 503, 200]
    assert uploaded.bytes == path.stat().st_size


def test_put_not_200_is_an_error(api_key: str, tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/files":
            return httpx.Response(
                302,
                headers={"Location": "http://s3/x?X-Amz-Signature=s", "X-Together-File-Id": "f"},
            )
        return httpx.Response(204)

    path = _write_requests(tmp_path / "r.jsonl")
    with TogetherClient(api_key, "http://t", http_transport=httpx.MockTransport(handler)) as c:
        with pytest.raises(Exception, match="answered 204, expected 200") as info:
            c.files.upload(path, check=False)
    assert "X-Amz-Signature" not in str(info.value)
    assert "http://s3/x" in str(info.value)


def test_presigned_url_is_never_logged_whole(
    client: TogetherClient, emulator: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client.files.upload(_write_requests(tmp_path / "r.jsonl"), check=False)
    ours = [r for r in caplog.records if not r.name.startswith("dagster_together.emulator")]
    assert any("/_upload/file-" in r.getMessage() for r in ours)  # host + path are logged
    assert not [r.getMessage() for r in ours if "X-Amz-Signature=" in r.getMessage()]


def test_list_retrieve_delete(client: TogetherClient, emulator: Any, tmp_path: Path) -> None:
    ours = client.files.upload(_write_requests(tmp_path / "r.jsonl"), check=False)
    generated = emulator.add_file(b'{"x": 1}\n', purpose="batch-generated")
    listed = {f.id: f for f in client.files.list()}
    assert set(listed) == {ours.id, generated}
    assert listed[generated].purpose == "batch-generated"  # an unknown purpose is fine
    assert listed[ours.id].file_type == "jsonl"
    assert client.files.retrieve(generated).bytes == 9
    assert client.files.delete(ours.id) is True
    with pytest.raises(NotFoundError):
        client.files.retrieve(ours.id)
    assert [f.id for f in client.files.list()] == [generated]


def test_upload_of_a_large_file_keeps_memory_flat(
    client: TogetherClient, emulator: Any, tmp_path: Path
) -> None:
    path = tmp_path / "big.jsonl"
    line = (
        json.dumps({"custom_id": "x", "body": {"model": "m", "prompt": "y" * 980}}) + "\n"
    ).encode()
    with path.open("wb") as handle:
        for _ in range(100):
            handle.write(line * 1024)  # ~100 MB, the API's limit for one input file
    size = os.path.getsize(path)
    tracemalloc.start()
    try:
        uploaded = client.files.upload(path, check=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert uploaded.bytes == size
    # Client and emulator (same process) both stream in 1 MiB pieces; far below the file size.
    assert peak < 16 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.0f} MB upload"
