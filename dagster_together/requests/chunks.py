"""``write_request_chunks``: validated requests cut into files within the API's limits."""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
from collections.abc import Callable, Container, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dagster_together.client.errors import InvalidRequestFileError
from dagster_together.requests.lines import ENCODER
from dagster_together.requests.rules import (
    _EXAMPLE_LINE,
    MAX_BATCH_BYTES,
    MAX_REQUESTS_PER_BATCH,
    _Rules,
    check_endpoint,
)
from dagster_together.requests.table import TableRequests
from dagster_together.storage import PendingFile, commit_all, filesystem, join, open_pending

if TYPE_CHECKING:  # pragma: no cover
    pass

logger = logging.getLogger(__name__)

# Lines are written and hashed in blocks of about this size: one call per line costs more than
# the encoding itself.
_BLOCK_BYTES = 1 << 20


@dataclass(frozen=True)
class RequestChunk:
    """One batch input file written by :func:`write_request_chunks`.

    Attributes:
        path: where the file was written (a local path or an fsspec URL).
        n_requests: number of lines.
        n_bytes: size in bytes (newlines included).
        sha256: hex sha256 of the bytes.
        first_custom_id: ``custom_id`` of the first line.
        last_custom_id: ``custom_id`` of the last line.
        models: distinct ``body.model`` values in this file, in order of first appearance.
    """

    path: str
    n_requests: int
    n_bytes: int
    sha256: str
    first_custom_id: str
    last_custom_id: str
    models: tuple[str, ...] = ()


def write_request_chunks(
    requests: Iterable[Mapping[str, Any]],
    destination: str | os.PathLike[str],
    *,
    max_requests: int = MAX_REQUESTS_PER_BATCH,
    max_bytes: int = MAX_BATCH_BYTES,
    storage_options: Mapping[str, Any] | None = None,
    prefix: str = "requests",
    endpoint: str | None = None,
    require_single_model: bool = False,
    observe: Callable[[Mapping[str, Any]], None] | None = None,
    exclude: Container[str] = (),
) -> list[RequestChunk]:
    """Validate requests and write them as batch input files of at most the API's limits.

    Files are named ``{destination}/{prefix}-00000.jsonl``, ``-00001`` ... Each holds at most
    ``max_requests`` lines and ``max_bytes`` bytes (UTF-8, newline included). Every request is
    checked as it goes, with the rules of :func:`check_request_file`: ids unique across *all*
    files, at most 64 characters, a model in every body, a JSON-serialisable body, one endpoint.

    Nothing is published until every request passed: files are staged (inside the destination
    directory for local paths, in a local temporary directory for object stores) and published
    at the end. Files ``{prefix}-NNNNN.jsonl`` left from an earlier, longer run are removed, so the
    destination always holds exactly the returned set.

    Args:
        requests: request mappings (e.g. from :func:`build_requests`); an optional ``"url"`` key is
            checked and kept.
        destination: a local directory or an fsspec URL (a "directory" prefix).
        max_requests: lines per file, at most the API's 50,000.
        max_bytes: bytes per file, at most the API's 100 MB.
        storage_options: passed to fsspec for URLs.
        prefix: file name prefix.
        endpoint: the batch endpoint, when known; ``"url"`` keys must match it.
        require_single_model: refuse requests naming different models.
        observe: called with every request written, once it passed the checks (e.g. to count
            tokens for a cost estimate in the same pass).
        exclude: ``custom_id`` values checked like the others but not written (requests the
            answer store already answers).

    Returns:
        One RequestChunk per file, in order; empty when ``requests`` is empty.

    Raises:
        InvalidRequestFileError: the first bad request, named by its position and custom_id.
        ValueError: limits over the API's or below one request.
    """
    if not 1 <= max_requests <= MAX_REQUESTS_PER_BATCH:
        raise ValueError(
            f"max_requests={max_requests} must be between 1 and the API's limit of "
            f"{MAX_REQUESTS_PER_BATCH:,}."
        )
    if not 1 <= max_bytes <= MAX_BATCH_BYTES:
        raise ValueError(
            f"max_bytes={max_bytes} must be between 1 and the API's limit of {MAX_BATCH_BYTES:,}."
        )
    if not re.fullmatch(r"[A-Za-z0-9._-]+", prefix):
        raise ValueError(f"prefix={prefix!r} may only hold letters, digits, '.', '_' and '-'.")
    destination = str(os.fspath(destination))
    check_endpoint(endpoint, "write_request_chunks")
    # Requests built from the user's table: messages name its rows and id column.
    built = requests if isinstance(requests, TableRequests) else None
    rules = _Rules(
        endpoint=endpoint,
        require_single_model=require_single_model,
        label="request #{}".format,
        ref="request #{}".format,
        rows=built.naming if built is not None else None,
    )
    writer = _ChunkWriter(destination, storage_options, prefix, max_requests, max_bytes)
    try:
        for pos, request in enumerate(requests, start=1):
            if built is not None:
                pos = built.position
            if not isinstance(request, Mapping):
                raise InvalidRequestFileError(
                    f"request #{pos}: is a {type(request).__name__}, not a mapping like "
                    f"{_EXAMPLE_LINE}."
                )
            line = built.line if built is not None else None
            if line is not None:  # made by the template: only what varies by row is checked
                custom_id, model = rules.check_built(request, pos)
                text = line
            else:
                custom_id, model, _ = rules.check_object(
                    request if isinstance(request, dict) else dict(request), pos
                )
                try:
                    text = ENCODER.encode(request)
                except (TypeError, ValueError) as exc:
                    raise InvalidRequestFileError(
                        f"{rules.label(pos)}: {rules.subject(custom_id)} has a body that is not "
                        f"JSON-serialisable ({exc}); convert such values (dates, decimals, NaN, "
                        "numpy numbers) to plain strings or numbers first."
                    ) from None
            data = text.encode("utf-8") + b"\n"
            if len(data) > max_bytes:
                raise InvalidRequestFileError(
                    f"{rules.label(pos)}: {rules.subject(custom_id)} is {len(data):,} bytes as JSON, "
                    f"over max_bytes={max_bytes:,}; shorten the request."
                )
            if custom_id in exclude:
                continue
            writer.add(data, custom_id, model)
            if observe is not None:
                observe(request)
        result = writer.finish()
        commit_all(writer.files)
    finally:
        writer.abort()  # after a failure: every file; after the commit: nothing
    _remove_stale(destination, storage_options, prefix, len(result))
    logger.info(
        "Wrote %s requests in %s file(s) to %s",
        sum(c.n_requests for c in result),
        len(result),
        destination,
    )
    return result


class _ChunkWriter:
    """Cuts the request lines into files; each is a pending file, published by the caller once
    every request passed (staged locally for object stores, so nothing is sent before)."""

    def __init__(
        self,
        destination: str,
        storage_options: Mapping[str, Any] | None,
        prefix: str,
        max_requests: int,
        max_bytes: int,
    ) -> None:
        self.destination = destination
        self.storage_options = storage_options
        self.prefix = prefix
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.chunks: list[RequestChunk] = []
        self.files: list[PendingFile] = []
        self.handle: PendingFile | None = None
        # Writing and hashing a block (both release the GIL) overlap building the next one; one
        # block in flight at most, written in order.
        self.worker = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="dagster-together-chunks"
        )
        self.pending: Future[None] | None = None

    def _open(self) -> None:
        self.path = join(self.destination, f"{self.prefix}-{len(self.chunks):05d}.jsonl")
        self.handle = open_pending(self.path, self.storage_options, stage_locally=True)
        self.files.append(self.handle)
        self.digest = hashlib.sha256()
        self.block: list[bytes] = []
        self.block_size = 0
        self.n = self.size = 0
        self.first = self.last = ""
        self.models: dict[str, None] = {}

    def _flush(self) -> None:
        assert self.handle is not None
        data = b"".join(self.block)
        self._wait()
        self.pending = self.worker.submit(_write_and_hash, self.handle, self.digest, data)
        self.block.clear()
        self.block_size = 0

    def _wait(self) -> None:
        """Wait for the block in flight; raises what its write raised."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def _close(self) -> None:
        self._flush()
        self._wait()
        self.handle = None
        self.chunks.append(
            RequestChunk(
                path=self.path,
                n_requests=self.n,
                n_bytes=self.size,
                sha256=self.digest.hexdigest(),
                first_custom_id=self.first,
                last_custom_id=self.last,
                models=tuple(self.models),
            )
        )

    def add(self, data: bytes, custom_id: str, model: str) -> None:
        if self.handle is not None and (
            self.n >= self.max_requests or self.size + len(data) > self.max_bytes
        ):
            self._close()
        if self.handle is None:
            self._open()
            self.first = custom_id
        self.block.append(data)
        self.block_size += len(data)
        if self.block_size >= _BLOCK_BYTES:
            self._flush()
        self.n += 1
        self.size += len(data)
        self.last = custom_id
        self.models.setdefault(model)

    def finish(self) -> list[RequestChunk]:
        if self.handle is not None:
            self._close()
        return self.chunks

    def abort(self) -> None:
        if self.pending is not None:
            self.pending.exception()  # a file is not aborted under its write
        self.worker.shutdown(wait=True)
        for pending in self.files:
            pending.abort()


def _write_and_hash(handle: PendingFile, digest: Any, data: bytes) -> None:
    handle.write(data)
    digest.update(data)


def _remove_stale(
    destination: str, storage_options: Mapping[str, Any] | None, prefix: str, keep: int
) -> None:
    """Remove ``{prefix}-NNNNN.jsonl`` files numbered ``keep`` and above (an older, longer set)."""
    pattern = re.compile(rf"{re.escape(prefix)}-(\d{{5}})\.jsonl")
    fs, root = filesystem(destination, storage_options)
    try:
        listing = fs.ls(root.rstrip("/"), detail=False)
    except FileNotFoundError:
        return
    for entry in listing:
        match = pattern.fullmatch(posixpath.basename(str(entry).rstrip("/")))
        if match and int(match.group(1)) >= keep:
            logger.info("Removing %s, left from an earlier, longer set of chunks", entry)
            fs.rm_file(entry)
