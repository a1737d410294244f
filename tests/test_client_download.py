"""retrieve_content over real HTTP: local, memory:// and s3:// (moto), resume, verify, atomicity."""

from __future__ import annotations

import gzip
import logging
import os
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import httpx
import pytest

import dagster_together.client.download as download
from dagster_together.client import (
    APIConnectionError,
    DownloadError,
    FileObject,
    NotFoundError,
    TogetherClient,
    normalize_key,
)
from tests.helpers import (
    content_calls,
    fast_client,
    free_port,
    open_multipart_uploads,
    random_jsonl,
    sha256_hex,
)

MiB = 1024 * 1024


@pytest.fixture
def client(emulator: Any, api_key: str) -> Iterator[TogetherClient]:
    with fast_client(emulator, api_key, timeout=10, max_retries=5) as c:
        yield c


def _s3(s3_server: Any) -> Any:
    return fsspec.filesystem("s3", **s3_server.storage_options)


# -- destinations -------------------------------------------------------------------------------
def test_download_to_a_local_path(client: TogetherClient, emulator: Any, tmp_path: Path) -> None:
    data = random_jsonl(3 * MiB + 17)
    file_id = emulator.add_file(data)
    out = tmp_path / "nested" / "dir" / "out.jsonl"
    result = client.files.retrieve_content(file_id, output=out)
    assert result == FileObject(id=file_id, filename=str(out), size=len(data), object="local")
    assert sha256_hex(out.read_bytes()) == sha256_hex(data)
    assert os.listdir(out.parent) == ["out.jsonl"]  # no temporary file left behind
    (call,) = content_calls(emulator)
    assert call.status == 200 and "range" not in call.headers


def test_download_replaces_an_existing_file(
    client: TogetherClient, emulator: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"old contents that are longer than the new ones" * 100)
    file_id = emulator.add_file(b'{"a": 1}\n')
    client.files.retrieve_content(file_id, output=str(out))
    assert out.read_bytes() == b'{"a": 1}\n'


def test_default_output_is_the_normalised_id_in_cwd(
    client: TogetherClient, emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    file_id = emulator.add_file(b"x\n")
    result = client.files.retrieve_content(file_id)
    assert result.filename == str(tmp_path / normalize_key(f"{file_id}.jsonl"))
    assert Path(result.filename).read_bytes() == b"x\n"


def test_normalize_key() -> None:
    assert normalize_key("Batch_Out/Part 1.JSONL") == "batch-out--part-1.jsonl"
    assert normalize_key("../../etc/passwd") == "..--..--etc--passwd"
    assert "/" not in normalize_key("a/b\\c") and "\\" not in normalize_key("a/b\\c")


@pytest.mark.parametrize("bad_id", ["../../escape_me", "/etc/passwd", "a/../../b", "..\\x y"])
def test_an_api_id_never_escapes_the_cwd(
    api_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad_id: str
) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(200, content=b"data\n")

    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    with TogetherClient(api_key, "http://t", http_transport=httpx.MockTransport(handler)) as c:
        result = c.files.retrieve_content(bad_id)
    assert Path(result.filename).parent == work
    assert os.listdir(work) == [normalize_key(f"{bad_id}.jsonl")]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        Path(result.filename).name
    ]
    # The id is one percent-encoded path segment, never path syntax.
    assert seen == [
        f"/v1/files/{bad_id.replace('/', '%2F').replace(chr(92), '%5C').replace(' ', '%20')}/content"
    ]


def test_download_to_memory(client: TogetherClient, emulator: Any) -> None:
    data = random_jsonl(2 * MiB)
    file_id = emulator.add_file(data)
    url = f"memory://dl-{uuid.uuid4().hex}/out.jsonl"
    result = client.files.retrieve_content(file_id, output=url)
    assert result.filename == url and result.size == len(data)
    assert sha256_hex(fsspec.filesystem("memory").cat(url)) == sha256_hex(data)


def test_download_to_file_url(client: TogetherClient, emulator: Any, tmp_path: Path) -> None:
    file_id = emulator.add_file(b"abc\n")
    result = client.files.retrieve_content(file_id, output=f"file://{tmp_path}/o.jsonl")
    assert result.filename == str(tmp_path / "o.jsonl")
    assert (tmp_path / "o.jsonl").read_bytes() == b"abc\n"


def test_download_to_s3_multipart(
    client: TogetherClient,
    emulator: Any,
    s3_server: Any,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The smallest part S3 allows, so a 12 MB file is a real three-part multipart upload.
    monkeypatch.setattr(download, "REMOTE_BLOCK_SIZE", 5 * MiB)
    monkeypatch.setattr(download, "CHUNK_SIZE", 1 * MiB)
    data = random_jsonl(12 * MiB + 5)
    file_id = emulator.add_file(data)
    url = f"{s3_bucket}/results/out.jsonl"
    result = client.files.retrieve_content(
        file_id, output=url, storage_options=s3_server.storage_options
    )
    assert result.filename == url and result.size == len(data)
    fs = _s3(s3_server)
    assert sha256_hex(fs.cat(url)) == sha256_hex(data)
    assert fs.info(url)["ETag"].strip('"').endswith("-3")  # a completed 3-part upload
    assert open_multipart_uploads(s3_server, s3_bucket) == []


def test_download_small_file_to_s3(
    client: TogetherClient, emulator: Any, s3_server: Any, s3_bucket: str
) -> None:
    file_id = emulator.add_file(b'{"ok": true}\n')
    url = f"{s3_bucket}/small.jsonl"
    client.files.retrieve_content(file_id, output=url, storage_options=s3_server.storage_options)
    assert _s3(s3_server).cat(url) == b'{"ok": true}\n'


def test_output_that_is_a_directory_fails_before_any_request(
    client: TogetherClient, emulator: Any, tmp_path: Path
) -> None:
    with pytest.raises(IsADirectoryError):
        client.files.retrieve_content("file-x", output=tmp_path)
    assert emulator.requests == []


# -- resume and verification --------------------------------------------------------------------
def test_dropped_connection_is_resumed_with_range(
    client: TogetherClient, emulator: Any, tmp_path: Path
) -> None:
    data = random_jsonl(5 * MiB + 3)
    file_id = emulator.add_file(data)
    emulator.add_fault(path=r"/content$", kind="drop", after_bytes=1_500_000, times=3)
    out = tmp_path / "out.jsonl"
    result = client.files.retrieve_content(file_id, output=out)
    assert result.size == len(data)
    assert sha256_hex(out.read_bytes()) == sha256_hex(data)
    calls = content_calls(emulator)
    assert [c.status for c in calls] == [200, 206, 206, 206]
    assert [c.headers.get("range") for c in calls] == [
        None,
        "bytes=1500000-",
        "bytes=3000000-",
        "bytes=4500000-",
    ]
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_resume_keeps_progress_when_drops_are_shorter_than_a_chunk(
    client: TogetherClient, emulator: Any, tmp_path: Path
) -> None:
    # Drops every 1 MB, far below the 8 MiB write size: every resume must still advance.
    data = random_jsonl(4 * MiB)
    file_id = emulator.add_file(data)
    emulator.add_fault(path=r"/content$", kind="drop", after_bytes=1_000_000, times=4)
    result = client.files.retrieve_content(file_id, output=tmp_path / "o.jsonl")
    assert result.size == len(data)
    assert sha256_hex((tmp_path / "o.jsonl").read_bytes()) == sha256_hex(data)


class StripRange(httpx.HTTPTransport):
    """A proxy that ignores Range: the server then answers 200 with the whole file."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for name in ("range", "if-range"):
            if name in request.headers:
                del request.headers[name]
        return super().handle_request(request)


def test_full_answer_to_a_range_restarts_cleanly(
    emulator: Any, api_key: str, tmp_path: Path
) -> None:
    data = random_jsonl(3 * MiB)
    file_id = emulator.add_file(data)
    emulator.add_fault(path=r"/content$", kind="drop", after_bytes=1_000_000, times=2)
    with TogetherClient(
        api_key, emulator.base_url, backoff_base=0.01, http_transport=StripRange()
    ) as c:
        result = c.files.retrieve_content(file_id, output=tmp_path / "o.jsonl")
    assert result.size == len(data)
    assert (tmp_path / "o.jsonl").read_bytes() == data  # not the first MB twice
    assert [r.status for r in content_calls(emulator)] == [200, 200, 200]


def test_body_without_content_length(client: TogetherClient, emulator: Any, tmp_path: Path) -> None:
    data = random_jsonl(2 * MiB + 1)
    file_id = emulator.add_file(data)
    emulator.add_fault(path=r"/content$", kind="no_content_length")
    result = client.files.retrieve_content(file_id, output=tmp_path / "o.jsonl")
    assert result.size == len(data)
    assert sha256_hex((tmp_path / "o.jsonl").read_bytes()) == sha256_hex(data)


def _truncating_client(emulator: Any, api_key: str) -> TogetherClient:
    emulator.add_fault(path=r"/content$", kind="drop", after_bytes=4 * MiB, times=None)
    return TogetherClient(api_key, emulator.base_url, max_retries=1, backoff_base=0.01)


def test_truncated_body_after_max_retries_leaves_nothing_locally(
    emulator: Any, api_key: str, tmp_path: Path
) -> None:
    file_id = emulator.add_file(random_jsonl(12 * MiB))
    with _truncating_client(emulator, api_key) as c, pytest.raises(DownloadError) as info:
        c.files.retrieve_content(file_id, output=tmp_path / "out.jsonl")
    assert os.listdir(tmp_path) == []  # neither the output nor a temporary file
    message = str(info.value)
    assert "stopped after 8388608 of 12582912 bytes" in message
    assert "within 1 retries" in message and "Nothing was written" in message
    assert len(content_calls(emulator)) == 2


def test_truncated_body_leaves_nothing_in_memory_fs(emulator: Any, api_key: str) -> None:
    file_id = emulator.add_file(random_jsonl(12 * MiB))
    url = f"memory://dl-{uuid.uuid4().hex}/out.jsonl"
    with _truncating_client(emulator, api_key) as c, pytest.raises(DownloadError):
        c.files.retrieve_content(file_id, output=url)
    assert not fsspec.filesystem("memory").exists(url)


def test_truncated_body_leaves_nothing_on_s3(
    emulator: Any,
    api_key: str,
    s3_server: Any,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 5 MiB parts: a part is already uploaded when the download gives up, so the multipart
    # upload must be aborted, not completed.
    monkeypatch.setattr(download, "REMOTE_BLOCK_SIZE", 5 * MiB)
    monkeypatch.setattr(download, "CHUNK_SIZE", 1 * MiB)
    import s3fs

    discarded: list[int] = []
    real_discard = s3fs.core.S3File.discard

    def spy(self: Any) -> None:
        discarded.append(len(self.parts or []) if self.mpu else -1)
        real_discard(self)

    monkeypatch.setattr(s3fs.core.S3File, "discard", spy)
    file_id = emulator.add_file(random_jsonl(12 * MiB))
    url = f"{s3_bucket}/out/result.jsonl"
    with _truncating_client(emulator, api_key) as c, pytest.raises(DownloadError):
        c.files.retrieve_content(file_id, output=url, storage_options=s3_server.storage_options)
    assert discarded == [1]  # one part was uploaded, then the multipart upload was aborted
    fs = _s3(s3_server)
    assert not fs.exists(url)
    assert fs.ls(s3_bucket.removeprefix("s3://")) == []
    assert open_multipart_uploads(s3_server, s3_bucket) == []


def test_s3_keeps_an_older_object_when_the_new_download_fails(
    emulator: Any, api_key: str, s3_server: Any, s3_bucket: str
) -> None:
    url = f"{s3_bucket}/keep.jsonl"
    _s3(s3_server).pipe(url, b"previous good result\n")
    file_id = emulator.add_file(random_jsonl(9 * MiB))
    with _truncating_client(emulator, api_key) as c, pytest.raises(DownloadError):
        c.files.retrieve_content(file_id, output=url, storage_options=s3_server.storage_options)
    assert _s3(s3_server).cat(url) == b"previous good result\n"


def test_unknown_file_is_not_found_and_leaves_nothing(
    client: TogetherClient, emulator: Any, tmp_path: Path
) -> None:
    with pytest.raises(NotFoundError):
        client.files.retrieve_content("file-missing", output=tmp_path / "o.jsonl")
    assert os.listdir(tmp_path) == []
    assert len(content_calls(emulator)) == 1


def test_5xx_before_the_body_is_retried(
    client: TogetherClient, emulator: Any, tmp_path: Path
) -> None:
    file_id = emulator.add_file(b"abc\n")
    emulator.add_fault(path=r"/content$", status=503, times=2)
    client.files.retrieve_content(file_id, output=tmp_path / "o.jsonl")
    assert [c.status for c in content_calls(emulator)] == [503, 503, 200]


# -- answers the emulator does not give ---------------------------------------------------------
class _Stream(httpx.SyncByteStream):
    """A body that arrives over time (``httpx.Response(content=...)`` would be pre-read)."""

    def __init__(self, data: bytes, *, broken: bool = False) -> None:
        self._data = data
        self._broken = broken

    def __iter__(self) -> Iterator[bytes]:
        yield self._data
        if self._broken:
            raise httpx.ReadError("connection reset")


def _answer(status: int, data: bytes, broken: bool = False, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, stream=_Stream(data, broken=broken))


def test_wrong_content_range_restarts_from_zero(api_key: str, tmp_path: Path) -> None:
    data = b"0123456789"
    answers = [
        _answer(200, data[:4], broken=True, **{"content-length": "10"}),
        # Asked for bytes=4-, got a range starting elsewhere: cannot be spliced.
        _answer(206, data[2:], **{"content-range": "bytes 2-9/10", "content-length": "8"}),
        _answer(200, data, **{"content-length": "10"}),
    ]
    ranges: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        ranges.append(request.headers.get("range"))
        return answers.pop(0)

    with TogetherClient(
        api_key, "http://t", http_transport=httpx.MockTransport(handler), backoff_base=0.01
    ) as c:
        result = c.files.retrieve_content("f", output=tmp_path / "o")
    assert (tmp_path / "o").read_bytes() == data and result.size == 10
    assert ranges == [None, "bytes=4-", None]


def test_compressed_body_is_decoded_and_verified(api_key: str, tmp_path: Path) -> None:
    data = random_jsonl(100_000)
    packed = gzip.compress(data)

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["accept-encoding"] == "identity"
        calls.append(request.headers.get("range"))
        if len(calls) == 1:  # broken halfway: a compressed body cannot be resumed by offset
            half = packed[: len(packed) // 2]
            return _answer(200, half, broken=True, **{"content-encoding": "gzip"})
        length = str(len(packed))
        return _answer(200, packed, **{"content-encoding": "gzip", "content-length": length})

    calls: list[str | None] = []
    with TogetherClient(
        api_key, "http://t", http_transport=httpx.MockTransport(handler), backoff_base=0.01
    ) as c:
        result = c.files.retrieve_content("f", output=tmp_path / "o")
    assert (tmp_path / "o").read_bytes() == data and result.size == len(data)
    assert calls == [None, None]  # restarted from zero, no Range


def test_more_bytes_than_announced_is_an_error(api_key: str, tmp_path: Path) -> None:
    answers = [
        _answer(200, b"ab", broken=True, **{"content-length": "4"}),
        _answer(206, b"cdEXTRA", **{"content-range": "bytes 2-3/4"}),
    ]
    mock = httpx.MockTransport(lambda request: answers.pop(0))
    with TogetherClient(api_key, "http://t", http_transport=mock, backoff_base=0.01) as c:
        with pytest.raises(DownloadError, match="received 9 bytes but the server announced 4"):
            c.files.retrieve_content("f", output=tmp_path / "o")
    assert os.listdir(tmp_path) == []


# -- progress and memory ------------------------------------------------------------------------
class ListLog:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.lines.append(msg)


def test_logger_gets_a_line_every_ten_percent(
    client: TogetherClient, emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster_together.client.progress as progress

    monkeypatch.setattr(download, "CHUNK_SIZE", 64 * 1024)
    monkeypatch.setattr(progress, "_MIN_LOG_INTERVAL", 0.0)  # a slow download, as it were
    data = random_jsonl(4 * MiB)
    file_id = emulator.add_file(data)
    log = ListLog()
    client.files.retrieve_content(file_id, output=tmp_path / "o", logger=log, progress=False)
    assert 9 <= len(log.lines) <= 11
    assert all("MB/s" in line for line in log.lines)
    percents = [int(line.split("%")[0].rsplit(" ", 1)[-1]) for line in log.lines[:-1]]
    assert percents == sorted(percents) and 10 <= percents[0] < 20 and percents[-1] >= 90
    assert log.lines[-1].startswith(f"Downloading {file_id}: done, 4.2 MB written to ")


def test_a_quick_download_logs_only_its_final_line(
    client: TogetherClient, emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download, "CHUNK_SIZE", 64 * 1024)
    file_id = emulator.add_file(random_jsonl(4 * MiB))
    log = ListLog()
    client.files.retrieve_content(file_id, output=tmp_path / "o", logger=log, progress=False)
    assert [line.split(":")[1].split(",")[0] for line in log.lines] == [" done"]


def test_no_progress_bar_without_a_terminal(
    client: TogetherClient, emulator: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file_id = emulator.add_file(random_jsonl(MiB))
    client.files.retrieve_content(file_id, output=tmp_path / "o")
    assert capsys.readouterr().err == ""


def test_large_download_keeps_memory_flat(
    client: TogetherClient, emulator: Any, tmp_path: Path
) -> None:
    source = tmp_path / "source.jsonl"
    block = random_jsonl(MiB)
    with source.open("wb") as handle:
        for _ in range(100):
            handle.write(block)
    file_id = emulator.add_file(source)
    tracemalloc.start()
    try:
        result = client.files.retrieve_content(file_id, output=tmp_path / "copy.jsonl")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.size == 100 * MiB
    assert peak < 40 * MiB, f"peak {peak / 1e6:.1f} MB for a 100 MiB download"


def test_progress_bar_on_a_terminal_unless_disabled(
    client: TogetherClient,
    emulator: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import dagster_together.client.progress as progress

    monkeypatch.setattr(progress, "_stderr_is_terminal", lambda: True)
    file_id = emulator.add_file(random_jsonl(MiB))
    client.files.retrieve_content(file_id, output=tmp_path / "a")
    assert f"Downloading {file_id}" in capsys.readouterr().err  # tqdm drew a bar
    client.files.retrieve_content(file_id, output=tmp_path / "b", progress=False)
    assert capsys.readouterr().err == ""


def test_log_lines_without_content_length(
    client: TogetherClient, emulator: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    file_id = emulator.add_file(random_jsonl(MiB))
    emulator.add_fault(path=r"/content$", kind="no_content_length")
    caplog.set_level(logging.INFO, logger="run")
    client.files.retrieve_content(file_id, output=tmp_path / "o", logger=logging.getLogger("run"))
    (line,) = [r.getMessage() for r in caplog.records if r.name == "run"]
    assert line.startswith(f"Downloading {file_id}: done, 1.0 MB written to {tmp_path / 'o'}")


# -- the download connection ---------------------------------------------------------------------
def _count_own_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the downloads whose body was read from our own connection (not through httpx)."""
    calls: list[int] = []
    real = download._pieces

    def counting(read1: Any) -> Any:
        calls.append(1)
        return real(read1)

    monkeypatch.setattr(download, "_pieces", counting)
    return calls


def test_body_is_read_from_our_own_connection_in_pieces(
    client: TogetherClient, emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download, "READ_SIZE", 1000)  # many reads, a short last one
    reads = _count_own_reads(monkeypatch)
    data = random_jsonl(MiB + 7)
    file_id = emulator.add_file(data)
    result = client.files.retrieve_content(file_id, output=tmp_path / "o.jsonl")
    assert result.size == len(data)
    assert (tmp_path / "o.jsonl").read_bytes() == data
    assert reads == [1]


def test_a_proxy_in_the_environment_keeps_downloads_on_httpx(
    emulator: Any, api_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Our own connection does not speak to proxies: httpx does (here it bypasses it for loopback).
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    reads = _count_own_reads(monkeypatch)
    data = random_jsonl(MiB)
    file_id = emulator.add_file(data)
    with fast_client(emulator, api_key, timeout=10, max_retries=1) as c:
        c.files.retrieve_content(file_id, output=tmp_path / "o.jsonl")
    assert (tmp_path / "o.jsonl").read_bytes() == data
    assert reads == []


def test_a_slow_answer_times_out_and_is_retried(
    emulator: Any, api_key: str, tmp_path: Path
) -> None:
    data = random_jsonl(MiB)
    file_id = emulator.add_file(data)
    emulator.add_fault(path=r"/content$", kind="delay", seconds=1.0, times=1)
    with fast_client(emulator, api_key, timeout=0.3, max_retries=2) as c:
        c.files.retrieve_content(file_id, output=tmp_path / "o.jsonl")
    assert (tmp_path / "o.jsonl").read_bytes() == data
    assert len(content_calls(emulator)) == 2


def test_no_server_is_a_connection_error_that_names_no_key(api_key: str, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with TogetherClient(api_key, url, max_retries=1, backoff_base=0.01) as c:
        with pytest.raises(APIConnectionError) as info:
            c.files.retrieve_content("file-x", output=tmp_path / "o.jsonl")
    assert api_key not in str(info.value) and api_key not in repr(info.value)
    assert os.listdir(tmp_path) == []
