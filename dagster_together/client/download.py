"""Retrieving a file's content: stream, resume, verify, publish atomically, to any fsspec URL.

The contract is together-python's ``Files.retrieve_content`` (``FileObject(object="local", id,
filename, size)``) with its faults fixed: it resumes a dropped connection with ``Range``, raises
on a short body instead of building an error it never raises, and never leaves a partial file at
the destination.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import httpx

from dagster_together.client.errors import DownloadError, TogetherError
from dagster_together.client.progress import LogSink, Progress
from dagster_together.client.transport import Transport, quote_id
from dagster_together.client.types import FileObject

__all__ = ["CHUNK_SIZE", "REMOTE_BLOCK_SIZE", "LogSink", "normalize_key", "retrieve_content"]

_log = logging.getLogger("dagster_together.client")

#: Read size from the socket and write size to the destination: large for throughput, and the
#: only buffer a local download holds, so memory stays flat whatever the file size.
CHUNK_SIZE = 8 * 1024 * 1024
#: Part size for object stores (s3fs buffers one block, then uploads it as one multipart part).
#: 32 MiB keeps parts few and large; peak memory is about block + chunk plus one copy (< 100 MB).
REMOTE_BLOCK_SIZE = 32 * 1024 * 1024

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


def normalize_key(key: str) -> str:
    """A file name derived from an API key/id: ``/`` (and ``\\``) -> ``--``, ``_`` and space ->
    ``-``, lower case. The result has no path separator, so it cannot leave its directory."""
    return key.replace("/", "--").replace("\\", "--").replace("_", "-").replace(" ", "-").lower()


# -- destinations ---------------------------------------------------------------------------------
class _Sink(Protocol):
    location: str

    def write(self, data: bytes) -> None: ...

    def restart(self) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class _LocalSink:
    """Writes ``.<name>.<random>.part`` next to the destination and ``os.replace``s it on commit:
    same directory, so the rename is atomic and readers see the old file or the whole new one."""

    def __init__(self, path: str) -> None:
        self.location = path
        directory, name = os.path.split(path)
        os.makedirs(directory, exist_ok=True)
        self._tmp = os.path.join(directory, f".{name}.{secrets.token_hex(8)}.part")
        # O_EXCL: never write through a file (or symlink) someone else put there; 0o666 lets the
        # umask decide the final permissions, like any other file the user creates.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        self._file: BinaryIO = os.fdopen(os.open(self._tmp, flags, 0o666), "wb")

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def restart(self) -> None:
        self._file.seek(0)
        self._file.truncate()

    def commit(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())  # the bytes are on disk before the name points at them
        self._file.close()
        os.replace(self._tmp, self.location)

    def abort(self) -> None:
        with suppress(OSError):
            self._file.close()
        with suppress(FileNotFoundError):
            os.remove(self._tmp)


class _FsspecSink:
    """Streams into ``fs.open(path, "wb")`` of a non-local fsspec filesystem.

    Why ``discard()`` and not ``close()`` on failure: closing an fsspec ``AbstractBufferedFile``
    *publishes* what was written, even after an exception inside ``with fs.open(...)`` (s3fs
    completes the multipart upload in ``close``). ``discard()`` throws the pending upload away
    instead (s3fs aborts the multipart upload, gcsfs cancels its resumable upload), and marking
    the file closed stops ``__del__`` from flushing it later. Files that are not buffered uploads
    (``memory://``, ...) are visible as soon as they are opened, so their partial is removed.
    """

    def __init__(self, fs: Any, path: str, url: str) -> None:
        self.location = url
        self._fs = fs
        self._path = path
        self._file: Any = self._open()

    def _open(self) -> Any:
        return self._fs.open(self._path, "wb", block_size=REMOTE_BLOCK_SIZE)

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def restart(self) -> None:
        self._discard()
        self._file = self._open()

    def commit(self) -> None:
        self._file.close()  # the final flush completes the upload

    def abort(self) -> None:
        self._discard()

    def _discard(self) -> None:
        from fsspec.spec import AbstractBufferedFile

        handle = self._file
        if isinstance(handle, AbstractBufferedFile):
            discards = type(handle).discard is not AbstractBufferedFile.discard
            try:
                handle.discard()
            except Exception:
                _log.warning(
                    "Could not abort the partial upload to %s; an incomplete upload may remain "
                    "(it is not visible as an object).",
                    self.location,
                    exc_info=True,
                )
            finally:
                handle.closed = True
            if discards:
                return  # nothing was published: an older object at the destination is untouched
        else:
            with suppress(Exception):
                handle.close()
        # A backend that publishes while writing: remove what it published.
        try:
            if self._fs.exists(self._path):
                self._fs.rm(self._path)
        except Exception:
            _log.warning("Could not remove the partial file %s", self.location, exc_info=True)


@dataclass(frozen=True)
class _Target:
    location: str
    fs: Any = None  # None: local file system
    path: str = ""

    def open(self) -> _Sink:
        if self.fs is None:
            return _LocalSink(self.location)
        return _FsspecSink(self.fs, self.path, self.location)


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def _local_target(path: str) -> _Target:
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
        raise IsADirectoryError(
            f"Cannot download to {path!r}: it is a directory. Give a file path as output."
        )
    return _Target(location=path)


def _resolve_target(
    file_id: str, output: str | os.PathLike[str] | None, storage_options: dict[str, Any] | None
) -> _Target:
    if output is None:
        # Never trust an API id as a path: the normalised name has no separator, and the check
        # below refuses anything that would still land outside the working directory.
        cwd = os.getcwd()
        name = normalize_key(f"{file_id}.jsonl")
        path = os.path.abspath(os.path.join(cwd, name))
        if os.path.dirname(path) != os.path.abspath(cwd) or name in (".", ".."):
            raise ValueError(f"File id {file_id!r} cannot be used as a file name; pass output=.")
        return _local_target(path)
    output = os.fspath(output)
    if not isinstance(output, str) or not output:
        raise ValueError(f"output must be a path or an fsspec URL, got {output!r}.")
    if "://" in output or "::" in output:
        from fsspec.core import url_to_fs

        fs, fs_path = url_to_fs(output, **(storage_options or {}))
        if _is_local(fs):
            return _local_target(fs_path)
        if output.endswith("/"):
            raise IsADirectoryError(
                f"Cannot download to {output!r}: it names a directory. Give a file URL as output."
            )
        return _Target(location=output, fs=fs, path=fs_path)
    return _local_target(output)


# -- the download loop ----------------------------------------------------------------------------
def _int_header(headers: httpx.Headers, name: str) -> int | None:
    try:
        value = int(headers.get(name, ""))
    except ValueError:
        return None
    return value if value >= 0 else None


class _Restart(Exception):
    """The server's answer cannot continue what we have: start again from byte 0."""


def retrieve_content(
    transport: Transport,
    file_id: str,
    *,
    output: str | os.PathLike[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: bool | None = None,
    logger: LogSink | None = None,
) -> FileObject:
    """Download ``GET /files/{file_id}/content`` to ``output``.

    Args:
        transport: the client's transport (auth, retries, timeouts).
        file_id: the file to fetch (an output or error file id of a batch, ...).
        output: a local path or any fsspec URL (``s3://``, ``gs://``, ``memory://``,
            ``file://``). None: ``normalize_key(f"{file_id}.jsonl")`` in the working directory.
        storage_options: passed to fsspec for URLs (credentials, ``endpoint_url``, ...).
        progress: False disables the progress bar; otherwise a tqdm bar is shown when stderr is
            a terminal.
        logger: anything with ``.info`` (e.g. Dagster's ``context.log``): one line per ~10 %.

    Returns:
        ``FileObject(object="local", id, filename=<where it was written>, size=<bytes>)``.
        ``filename`` is the absolute path for local files, the URL as given otherwise.

    The body is streamed in 8 MiB chunks. A dropped connection is resumed with
    ``Range: bytes=N-`` (a ``200`` instead of ``206`` restarts cleanly from zero), with backoff,
    up to the client's ``max_retries``. The byte count is checked against ``Content-Length``.
    The result is published atomically: a temporary file renamed into place locally, a
    multipart upload completed only at the end on object stores. On any failure nothing is left
    at ``output``.

    Raises:
        DownloadError: the body could not be fetched completely within the retries.
        APIError (e.g. NotFoundError), APIConnectionError, APITimeoutError: the first request
            failed before any byte arrived.
    """
    path = f"/files/{quote_id(file_id)}/content"
    described = transport.describe("GET", path)
    target = _resolve_target(file_id, output, storage_options)
    report = Progress(f"Downloading {file_id}", bar=progress, log=logger)
    written = 0
    failures = 0
    started = False
    validator: str | None = None  # ETag for If-Range: a changed file must not be spliced
    sink = target.open()
    try:
        while True:
            headers = {"Accept-Encoding": "identity"}  # byte offsets must mean file offsets
            if written:
                headers["Range"] = f"bytes={written}-"
                if validator:
                    headers["If-Range"] = validator
            try:
                response = transport.request(
                    "GET", path, headers=headers, stream=True, follow_redirects=True
                )
            except TogetherError as exc:
                if not written:
                    raise
                raise DownloadError(
                    f"Download of {file_id} to {target.location} failed after {written} bytes: "
                    f"{exc}. Nothing was written at the destination."
                ) from exc
            total: int | None = None
            resumable = True
            try:
                try:
                    total, resumable, continuing = _begin(response, written, file_id)
                    if written and not continuing:
                        # A full body (200) although we asked for a range: start over cleanly.
                        sink.restart()
                        report.restart()
                        written = 0
                    if not started:
                        report.start(total)
                        started = True
                    validator = response.headers.get("etag") or validator
                    chunks = (
                        response.iter_raw(CHUNK_SIZE)
                        if resumable
                        else response.iter_bytes(CHUNK_SIZE)
                    )
                    for chunk in chunks:
                        sink.write(chunk)
                        written += len(chunk)
                        report.update(len(chunk))
                    if not resumable:
                        # Decoded body: compare what came over the wire with Content-Length.
                        length = _int_header(response.headers, "content-length")
                        if length is not None and response.num_bytes_downloaded != length:
                            raise httpx.RemoteProtocolError("short encoded body")
                finally:
                    response.close()
                if total is not None and resumable and written < total:
                    # A server that closes early without HTTP noticing (no framing error).
                    raise httpx.RemoteProtocolError(f"body ended at {written} of {total} bytes")
            except (httpx.TransportError, _Restart) as exc:
                failures += 1
                if isinstance(exc, _Restart) or not resumable:
                    sink.restart()
                    report.restart()
                    written = 0
                if failures > transport.max_retries:
                    raise DownloadError(
                        f"Download of {file_id} to {target.location} stopped after {written} of "
                        f"{total if total is not None else 'unknown'} bytes and did not recover "
                        f"within {transport.max_retries} retries ({type(exc).__name__}: {exc}). "
                        "Nothing was written at the destination; try again later."
                    ) from exc
                transport.wait_before_retry(
                    failures,
                    described,
                    f"connection lost after {written} bytes ({type(exc).__name__}); resuming",
                )
                continue
            if total is not None and written != total:
                raise DownloadError(
                    f"Download of {file_id}: received {written} bytes but the server announced "
                    f"{total}. Nothing was written at the destination; try again."
                )
            break
        sink.commit()
    except BaseException:
        sink.abort()
        report.close()
        raise
    report.finish(sink.location)
    _log.info("Downloaded %s: %d bytes to %s", file_id, written, sink.location)
    return FileObject(id=file_id, filename=sink.location, size=written)


def _begin(response: httpx.Response, written: int, file_id: str) -> tuple[int | None, bool, bool]:
    """Check the answer to a (possibly ranged) GET.

    Returns (total size or None, resumable, continuing): ``resumable`` is False for a compressed
    body, whose byte offsets are not file offsets; ``continuing`` is True for the 206 we asked for.
    """
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    resumable = encoding in ("", "identity")
    length = _int_header(response.headers, "content-length")
    if response.status_code == 206:
        match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
        if not written or not match or int(match.group(1)) != written:
            # Not the continuation we asked for (or a range we never asked for): start over.
            raise _Restart(f"unexpected Content-Range {response.headers.get('content-range')!r}")
        full = match.group(3)
        total = int(full) if full != "*" else (written + length if length is not None else None)
        return total, resumable, True
    if response.status_code != 200:
        raise DownloadError(
            f"Together answered {response.status_code} to the download of {file_id}; "
            "expected 200 or 206. Nothing was written."
        )
    return (length if resumable else None), resumable, False
