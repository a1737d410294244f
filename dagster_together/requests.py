"""Build and validate Together batch input JSONL, and cut it into files the API accepts.

A batch input line is ``{"custom_id": "<unique, <= 64 chars>", "body": {"model": ..., ...}}``;
one file holds at most 50,000 lines and 100 MB. Together checks the whole file while the job is
``VALIDATING`` and fails the job for one bad line, so everything here refuses bad input *before*
anything is uploaded, with one message that names the file (or request), the line and the fix.

Decisions worth knowing:

* Blank lines are refused, wherever they are (JSONL is one JSON object per line, and the API
  reads it strictly). A missing newline after the last line is fine; ``\\r\\n`` line ends are fine.
* ``NaN``/``Infinity`` are not JSON and are refused, although Python's ``json`` would read them.
* An optional per-line ``"url"`` (the OpenAI batch format) must name a supported endpoint, the same
  one on every line, and match ``endpoint`` when that is given.
* ``custom_id`` length is counted in characters (code points), as Python's ``len`` does.

This module imports neither Dagster nor httpx; pyarrow is imported inside the functions that need it.
"""

from __future__ import annotations

import array
import bisect
import hashlib
import json
import logging
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from dagster_together.client.errors import InvalidRequestFileError
from dagster_together.storage import PendingFile, commit_all, filesystem, join, open_pending

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_CUSTOM_ID_LENGTH",
    "MAX_REQUESTS_PER_BATCH",
    "SUPPORTED_ENDPOINTS",
    "RequestChunk",
    "RequestFileStats",
    "RequestTemplate",
    "build_requests",
    "check_request_file",
    "input_columns_table",
    "write_input_columns",
    "write_request_chunks",
]

logger = logging.getLogger(__name__)

MAX_REQUESTS_PER_BATCH = 50_000
"""The API's limit on lines in one batch input file."""
MAX_BATCH_BYTES = 100 * 1024 * 1024
"""The API's limit on the size of one batch input file (100 MB, counted as 100 MiB)."""
MAX_CUSTOM_ID_LENGTH = 64
"""The API's limit on the length of a ``custom_id``."""
SUPPORTED_ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
)
"""Endpoints a batch may target."""

BATCH_PURPOSE = "batch-api"
# Bytes read per call. 2 MiB is as fast as 8 MiB, and pyarrow's parse of an 8 MiB block made the
# check of a 100 MB file hold +86 MB of RSS (+32 MB at 2 MiB).
_READ_SIZE = 2 * 1024 * 1024
_EXAMPLE_LINE = '{"custom_id": "row-1", "body": {"model": "...", "messages": [...]}}'


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every line: ``json.loads(s, parse_constant=...)`` would build a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


@dataclass(frozen=True)
class RequestFileStats:
    """What :func:`check_request_file` learnt about a valid file.

    Attributes:
        path: the path or URL as given.
        n_lines: number of requests (lines).
        n_bytes: size of the file in bytes.
        sha256: hex sha256 of the raw bytes (what the upload sends as ``checksum``).
        models: the distinct ``body.model`` values, in order of first appearance.
    """

    path: str
    n_lines: int
    n_bytes: int
    sha256: str
    models: tuple[str, ...]


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


@dataclass(frozen=True)
class RequestTemplate:
    """How to turn one row of a user's table into a request body.

    Attributes:
        model: the model every request uses.
        prompt_column: the column holding the user message (chat) or prompt (completions).
        system_prompt: an optional system message put before the user message (chat only).
        endpoint: ``/v1/chat/completions`` (``messages``) or ``/v1/completions`` (``prompt``).
        body: extra body fields copied into every request, e.g. ``max_tokens``, ``temperature``,
            ``response_format``. They may not set ``model``, ``messages`` or ``prompt``.
    """

    model: str
    prompt_column: str
    system_prompt: str | None = None
    endpoint: str = "/v1/chat/completions"
    body: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError("RequestTemplate.model must be a non-empty model name.")
        if self.endpoint not in ("/v1/chat/completions", "/v1/completions"):
            raise ValueError(
                f"RequestTemplate.endpoint {self.endpoint!r} is not supported: templates build "
                "'/v1/chat/completions' or '/v1/completions' bodies. For other endpoints build "
                "a table with 'custom_id' and 'body' columns."
            )
        clash = {"model", "messages", "prompt"} & set(self.body)
        if clash:
            raise ValueError(
                f"RequestTemplate.body may not set {sorted(clash)}: the template builds them "
                "(use model=, system_prompt= and prompt_column=)."
            )
        if self.system_prompt is not None and self.endpoint == "/v1/completions":
            raise ValueError(
                "RequestTemplate.system_prompt only applies to /v1/chat/completions; put the "
                "instructions into the prompt column for /v1/completions."
            )

    def build_body(self, prompt: str) -> dict[str, Any]:
        """The request body for one prompt."""
        body: dict[str, Any] = {"model": self.model}
        if self.endpoint == "/v1/completions":
            body["prompt"] = prompt
        else:
            messages = []
            if self.system_prompt is not None:
                messages.append({"role": "system", "content": self.system_prompt})
            messages.append({"role": "user", "content": prompt})
            body["messages"] = messages
        body.update(self.body)
        return body


# --------------------------------------------------------------------------------------------
# The rules, shared by check_request_file (lines of a file) and write_request_chunks (dicts)
# --------------------------------------------------------------------------------------------
class _Rules:
    """Per-request checks plus the cross-request state (ids seen, models, endpoint)."""

    def __init__(
        self,
        *,
        endpoint: str | None,
        require_single_model: bool,
        label: Callable[[int], str],
        ref: Callable[[int], str],
    ) -> None:
        self.endpoint = endpoint
        self.require_single_model = require_single_model
        # Positions (line numbers, request numbers) are kept as ints and only turned into text by
        # ``label`` for a message: 50,000 f-strings per file would cost more than the checks.
        self.label = label  # full position: "in.jsonl, line 7"
        self.ref = ref  # short position for a second line in one message: "line 7"
        self.seen: dict[str, int] = {}  # custom_id -> position of its first appearance
        self.models: dict[str, int] = {}  # model -> position of its first appearance (ordered)
        self.url: tuple[str, int] | None = None  # (url, position) of the first line with a url

    def check_object(self, obj: Any, pos: int) -> tuple[str, str, str | None]:
        """Check one parsed request; return (custom_id, model, url). Raises on the first fault."""
        where = self.label(pos)
        if not isinstance(obj, dict):
            raise InvalidRequestFileError(
                f"{where}: is a JSON {_json_type(obj)}, not an object; every line must be one "
                f"request object like {_EXAMPLE_LINE}."
            )
        custom_id = obj.get("custom_id")
        if "custom_id" not in obj or custom_id is None:
            raise InvalidRequestFileError(
                f'{where}: has no custom_id; add a unique string "custom_id" (at most '
                f"{MAX_CUSTOM_ID_LENGTH} characters) to every request: the results are joined on it."
            )
        if not isinstance(custom_id, str):
            example = (
                f', e.g. "custom_id": "{custom_id}"'
                if isinstance(custom_id, int) and not isinstance(custom_id, bool)
                else ""
            )
            raise InvalidRequestFileError(
                f"{where}: custom_id is a JSON {_json_type(custom_id)} ({_short(custom_id)}), not a "
                f"string; write it as a JSON string{example}."
            )
        if not custom_id:
            raise InvalidRequestFileError(
                f"{where}: custom_id is empty; give every request a unique, non-empty custom_id."
            )
        if len(custom_id) > MAX_CUSTOM_ID_LENGTH:
            raise InvalidRequestFileError(
                f"{where}: custom_id {_short(custom_id)!r} is {len(custom_id)} characters long, over "
                f"the limit of {MAX_CUSTOM_ID_LENGTH}; use a shorter id (e.g. a row number or a hash)."
            )
        body = obj.get("body")
        if body is None:
            raise InvalidRequestFileError(
                f'{where}: custom_id {custom_id!r} has no body; add a "body" object holding the '
                f'endpoint\'s request (with "model"), e.g. {_EXAMPLE_LINE}.'
            )
        if not isinstance(body, dict):
            raise InvalidRequestFileError(
                f"{where}: custom_id {custom_id!r} has a body that is a JSON {_json_type(body)}, not "
                'an object; "body" must be the request object itself, not a string holding JSON.'
            )
        model = body.get("model")
        if not isinstance(model, str) or not model:
            what = "no model" if model is None else f"model {model!r} (not a non-empty string)"
            raise InvalidRequestFileError(
                f'{where}: custom_id {custom_id!r} has a body with {what}; set "model" in every '
                "body (the batch takes its model from the bodies)."
            )
        url = obj.get("url")
        if url is not None and not isinstance(url, str):
            raise InvalidRequestFileError(
                f'{where}: custom_id {custom_id!r} has a url that is not a string; remove "url" '
                f"or set it to one of {', '.join(SUPPORTED_ENDPOINTS)}."
            )
        self.check_cross(custom_id, model, url, pos)
        return custom_id, model, url

    def check_cross(self, custom_id: str, model: str, url: str | None, pos: int) -> None:
        """The checks that need earlier requests: unique ids, one model, one endpoint."""
        seen = self.seen
        if custom_id in seen:
            raise InvalidRequestFileError(
                f"{self.label(pos)}: custom_id {custom_id!r} repeats "
                f"{self.ref(seen[custom_id])}; every custom_id must be unique in the batch "
                "(results are matched to requests by it)."
            )
        seen[custom_id] = pos
        if model not in self.models:
            if self.require_single_model and self.models:
                where = self.label(pos)
                other, other_pos = next(iter(self.models.items()))
                other_where = self.ref(other_pos)
                raise InvalidRequestFileError(
                    f"{where}: custom_id {custom_id!r} uses model {model!r} but {other_where} uses "
                    f"{other!r}; one model per batch is required here, so split the requests "
                    "by model."
                )
            self.models[model] = pos
        if url is not None:
            where = self.label(pos)
            if url not in SUPPORTED_ENDPOINTS:
                raise InvalidRequestFileError(
                    f"{where}: custom_id {custom_id!r} targets url {url!r}, which batches do not "
                    f"support; use one of {', '.join(SUPPORTED_ENDPOINTS)}."
                )
            if self.endpoint is not None and url != self.endpoint:
                raise InvalidRequestFileError(
                    f"{where}: custom_id {custom_id!r} targets {url!r} but the batch endpoint is "
                    f"{self.endpoint!r}; one endpoint per batch: fix the url or split the requests."
                )
            if self.url is None:
                self.url = (url, pos)
            elif self.url[0] != url:
                raise InvalidRequestFileError(
                    f"{where}: custom_id {custom_id!r} targets {url!r} but {self.ref(self.url[1])} targets "
                    f"{self.url[0]!r}; one endpoint per batch: split the requests by endpoint."
                )


def _check_endpoint(endpoint: str | None, where: str) -> None:
    if endpoint is not None and endpoint not in SUPPORTED_ENDPOINTS:
        raise InvalidRequestFileError(
            f"{where}: endpoint {endpoint!r} is not supported for batches; use one of "
            f"{', '.join(SUPPORTED_ENDPOINTS)}."
        )


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _short(value: Any, limit: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# check_request_file
# --------------------------------------------------------------------------------------------
def check_request_file(
    path: str | os.PathLike[str],
    *,
    purpose: str = BATCH_PURPOSE,
    endpoint: str | None = None,
    require_single_model: bool = False,
    max_lines: int = MAX_REQUESTS_PER_BATCH,
    max_bytes: int = MAX_BATCH_BYTES,
    storage_options: Mapping[str, Any] | None = None,
) -> RequestFileStats:
    """Validate a batch input JSONL file in one streaming pass and return its statistics.

    Memory stays flat whatever the file size (it is read in 2 MiB blocks); the sha256 of the raw
    bytes is computed in the same pass (in a second thread, so on a second core if there is one).
    Blocks are first checked with pyarrow's JSON parser; any block it has doubts about is
    re-checked line by line with :mod:`json`, which finds the exact line and writes the message.

    Args:
        path: a local path or an fsspec URL (``s3://...``, ``memory://...``).
        purpose: the upload purpose; batch inputs must be ``"batch-api"``.
        endpoint: the batch's endpoint, if known; lines carrying a ``"url"`` must match it.
        require_single_model: refuse a file whose bodies name more than one model.
        max_lines: refuse more lines than this (the API's limit by default).
        max_bytes: refuse a file bigger than this (the API's limit by default).
        storage_options: passed to fsspec for URLs.

    Returns:
        RequestFileStats with the line count, size, sha256 and the models used.

    Raises:
        InvalidRequestFileError: one message naming the file, the line and the fix, for: a path
            that does not exist, a wrong purpose, an empty file, blank lines, bytes that are not
            UTF-8, a line that is not JSON or not an object, a missing/empty/non-string/duplicate/
            too long ``custom_id``, a missing or non-object ``body``, a body without ``model``,
            mixed models (with ``require_single_model``), an unsupported or mixed endpoint, too
            many lines, too many bytes.
    """
    name = str(os.fspath(path))
    if purpose != BATCH_PURPOSE:
        raise InvalidRequestFileError(
            f"{name}: purpose {purpose!r} is not valid for a batch input file; upload it with "
            f"purpose={BATCH_PURPOSE!r}."
        )
    _check_endpoint(endpoint, name)
    state = _FileState(name, endpoint, require_single_model, max_lines, max_bytes)
    fs, fs_path = filesystem(name, storage_options)
    try:
        is_file = fs.isfile(fs_path)
    except OSError:
        is_file = False
    if not is_file:
        kind = "is a directory, not a file" if _isdir(fs, fs_path) else "does not exist"
        where = "check the path and storage_options." if "://" in name else "check the path."
        raise InvalidRequestFileError(f"{name}: {kind}; {where}")

    # One buffer for the whole pass, read into: no new 2 MiB bytes per read (page faults) and no
    # copies to join a line cut by a read; only the unfinished last line moves to the front.
    buf = bytearray(_READ_SIZE)
    held = 0  # buf[:held]: the start of a line whose newline is not read yet
    with fs.open(fs_path, "rb") as handle, _Sha256() as digest:
        while True:
            if held == len(buf):  # a line longer than the buffer: a new one, twice as big
                buf = buf + bytes(len(buf))  # (not +=: a finished hash may still hold a view)
            end = held + _read_into(handle, memoryview(buf)[held:])
            if end == held:
                break
            # The raw bytes, exactly what an upload sends, hashed on another core meanwhile.
            digest.update(memoryview(buf)[held:end])
            state.n_bytes_read += end - held
            cut = buf.rfind(b"\n", 0, end) + 1
            if cut:
                state.feed(buf, cut)
            digest.wait()  # before the buffer is written again
            held = end - cut
            if state.n_bytes + held > max_bytes:
                # A line longer than the byte limit (no newline yet): no need to read on.
                state.over_bytes()
            buf[:held] = buf[cut:end]
        if held:
            state.feed(buf, held)  # the last line without its newline: allowed
        sha256 = digest.hexdigest()
    state.finish()
    return RequestFileStats(
        path=name,
        n_lines=state.n_lines,
        n_bytes=state.n_bytes,
        sha256=sha256,
        models=tuple(state.rules.models),
    )


def _read_into(handle: Any, view: memoryview) -> int:
    """``handle.readinto(view)``, for file objects that have it; 0 at the end of the file."""
    readinto = getattr(handle, "readinto", None)
    if readinto is not None:
        return int(readinto(view) or 0)
    data = handle.read(len(view))
    view[: len(data)] = data
    return len(data)


class _Sha256:
    """A sha256 whose big updates run in a worker thread (hashlib lets go of the GIL for them),
    so a check's hashing overlaps its parsing. ``wait()`` before the data is changed."""

    _BACKGROUND = 256 * 1024  # smaller pieces are hashed in place: a thread hop costs more

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._pool: Any = None
        self._pending: Any = None

    def __enter__(self) -> _Sha256:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def update(self, data: memoryview) -> None:
        self.wait()
        if len(data) < self._BACKGROUND:
            self._digest.update(data)
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="sha256")
        self._pending = self._pool.submit(self._digest.update, data)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def hexdigest(self) -> str:
        self.wait()
        return self._digest.hexdigest()


class _FileState:
    """Line-level state of one check_request_file pass."""

    def __init__(
        self,
        name: str,
        endpoint: str | None,
        require_single_model: bool,
        max_lines: int,
        max_bytes: int,
    ) -> None:
        self.name = name
        self.rules = _Rules(
            endpoint=endpoint,
            require_single_model=require_single_model,
            label=self.where,
            ref="line {}".format,
        )
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.n_lines = 0  # lines checked so far
        self.n_bytes = 0  # bytes of the lines checked so far
        self.n_bytes_read = 0
        self.leading_blank: int | None = None  # first blank line, while no request has been seen

    def where(self, line_no: int) -> str:
        return f"{self.name}, line {line_no}"

    def feed(self, buf: bytearray, end: int) -> None:
        """Check the whole lines in ``buf[:end]`` (the last may lack its newline only at EOF)."""
        starts = _line_starts(buf, end)  # one entry per line, plus the end of the block
        n = len(starts) - 1
        # Cut the block where a limit is crossed: the lines before it are checked first, so the
        # first fault in file order is the one reported.
        fault: str | None = None
        if n > self.max_lines - self.n_lines:
            n = self.max_lines - self.n_lines
            fault = "lines"
        if self.n_bytes + starts[n] > self.max_bytes:
            room = self.max_bytes - self.n_bytes
            n = bisect.bisect_right(starts, room, 0, n + 1) - 1  # whole lines that fit
            fault = "bytes"
        if n < len(starts) - 1:
            starts = starts[: n + 1]
        if n:
            if self.leading_blank is not None or not self._fast(buf, starts):
                self._exact(bytes(buf[: starts[n]]))
            self.n_lines += n
            self.n_bytes += starts[n]
        if fault == "lines":
            raise InvalidRequestFileError(
                f"{self.where(self.n_lines + 1)}: the file has more than {self.max_lines:,} lines, "
                "the limit for one batch; split it, e.g. with write_request_chunks(max_requests="
                f"{self.max_lines})."
            )
        if fault == "bytes":
            self.over_bytes()

    def over_bytes(self) -> None:
        raise InvalidRequestFileError(
            f"{self.where(self.n_lines + 1)}: the file is larger than {_human(self.max_bytes)}, "
            "the limit for one batch input, and this line is the "
            "first past it; split it, e.g. with write_request_chunks(max_bytes=...)."
        )

    def _fast(self, buf: bytearray, starts: Sequence[int]) -> bool:
        """Vectorised check of the lines ``buf[:starts[-1]]`` with pyarrow; True if every line is
        certainly valid.

        False sends the block to the exact line-by-line check, which writes the message. This
        path must never accept what the exact path refuses, hence the guards below.
        """
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.json as pa_json

        n = len(starts) - 1
        end = starts[n]
        # Every line must start with "{": this also keeps blank lines and bare ``null`` lines away
        # from pyarrow (which turns ``null`` into an all-null row, or crashes on it alone).
        if bytes(map(buf.__getitem__, starts[:-1])).strip(b"{"):
            return False
        if _may_hold_nonfinite(buf, end):
            return False  # maybe a bare NaN/Inf token, which pyarrow accepts and JSON does not
        # The lines as an Arrow buffer, without a copy (one is made only for a last line that
        # lacks its newline, at the end of the file).
        block = pa.py_buffer(buf)[:end] if buf[end - 1] == 0x0A else pa.py_buffer(buf[:end] + b"\n")
        # (all of buf ASCII implies the block is; beyond ``end`` are bytes of earlier reads)
        if not buf.isascii() and not _is_utf8(block):
            return False  # pyarrow does not check the fields it ignores
        try:
            table = pa_json.read_json(
                pa.BufferReader(block),
                read_options=pa_json.ReadOptions(use_threads=True, block_size=1 << 22),
                parse_options=pa_json.ParseOptions(
                    explicit_schema=_check_schema(), unexpected_field_behavior="ignore"
                ),
            )
        except (pa.ArrowInvalid, ValueError):
            return False
        if table.num_rows != n:
            return False  # two objects on one line, or similar
        ids = table.column("custom_id")
        body = table.column("body")
        models = pc.struct_field(body, "model")
        urls = table.column("url")
        id_len = pc.utf8_length(ids)
        bad = pc.or_kleene(
            pc.or_kleene(pc.equal(id_len, 0), pc.greater(id_len, MAX_CUSTOM_ID_LENGTH)),
            pc.equal(pc.utf8_length(models), 0),
        )
        # Nulls (missing custom_id, body or model) make ``bad`` null: counted as bad too.
        if pc.any(pc.fill_null(bad, True)).as_py() or body.null_count:
            return False
        check = self.rules.check_cross
        first = self.n_lines + 1
        url_list = urls.to_pylist() if urls.null_count < len(urls) else [None] * n
        for i, (custom_id, model, url) in enumerate(
            zip(ids.to_pylist(), models.to_pylist(), url_list, strict=True)
        ):
            check(custom_id, model, url, first + i)
        return True

    def _exact(self, block: bytes) -> None:
        """Line-by-line check with :mod:`json`; raises with the exact message on the first fault."""
        lines = block[:-1].split(b"\n") if block.endswith(b"\n") else block.split(b"\n")
        for line_no, raw in enumerate(lines, start=self.n_lines + 1):
            where = self.where(line_no)
            if not raw.strip():
                if not self.rules.seen:
                    # No request yet: the file may hold only blank lines; that is said at the end.
                    if self.leading_blank is None:
                        self.leading_blank = line_no
                    continue
                raise InvalidRequestFileError(_blank_message(where))
            if self.leading_blank is not None:
                raise InvalidRequestFileError(_blank_message(self.where(self.leading_blank)))
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidRequestFileError(
                    f"{where}: is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column "
                    f"{exc.start + 1}); save the file as UTF-8."
                ) from None
            if text.startswith("\ufeff"):
                raise InvalidRequestFileError(
                    f"{where}: starts with a UTF-8 byte order mark (BOM); save the file as UTF-8 "
                    "without BOM."
                )
            try:
                obj = _DECODER.decode(text)
            except json.JSONDecodeError as exc:
                if text.startswith(("Inf", "-Inf"), exc.pos):  # pyarrow's spelling of Infinity
                    raise InvalidRequestFileError(
                        f"{where}: is not valid JSON (Inf is not valid JSON, column "
                        f"{exc.colno}); use a number or null instead."
                    ) from None
                raise InvalidRequestFileError(
                    f"{where}: is not valid JSON ({exc.msg}, column {exc.colno}); "
                    + _json_fix(text, line_no)
                ) from None
            except ValueError as exc:  # NaN / Infinity, refused by _reject_constant
                raise InvalidRequestFileError(
                    f"{where}: is not valid JSON ({exc}); use a number or null instead."
                ) from None
            if line_no == 1 and isinstance(obj, list):
                raise InvalidRequestFileError(
                    f"{where}: is a JSON array; the file looks like one JSON document: write one "
                    f"request object per line (JSONL), like {_EXAMPLE_LINE}."
                )
            self.rules.check_object(obj, line_no)

    def finish(self) -> None:
        if self.n_bytes_read == 0:
            raise InvalidRequestFileError(
                f"{self.name}: is empty; a batch input needs at least one request line like "
                f"{_EXAMPLE_LINE}."
            )
        if not self.rules.seen:
            raise InvalidRequestFileError(
                f"{self.name}: contains only blank lines (from line {self.leading_blank or 1}); "
                f"write one request per line like {_EXAMPLE_LINE}."
            )


def _blank_message(where: str) -> str:
    return (
        f"{where}: is blank; JSONL allows no blank lines (the API reads the file strictly): "
        "delete the line."
    )


def _json_fix(text: str, line_no: int) -> str:
    stripped = text.strip()
    if line_no == 1 and stripped.startswith("["):
        return (
            "the file looks like a JSON array: write one request object per line (JSONL) instead."
        )
    if stripped in ("{", "[", "}", "]", "},", "],") or stripped.endswith(("{", "[", ",")):
        return (
            "the file looks like pretty-printed JSON: write each request on a single line (JSONL), "
            "e.g. json.dumps(request) + '\\n'."
        )
    return f"each line must be one complete JSON object (JSONL), like {_EXAMPLE_LINE}."


def _line_starts(buf: bytes | bytearray, end: int) -> array.array:
    """Where each line of ``buf[:end]`` starts, then ``end`` (one pass of ``find``)."""
    starts = array.array("q", [0])
    append = starts.append
    find = buf.find
    i = find(b"\n", 0, end)
    while i != -1:
        append(i + 1)
        i = find(b"\n", i + 1, end)
    if starts[-1] != end:  # the last line has no newline (end of the file)
        append(end)
    return starts


# pyarrow's parser (RapidJSON) reads these as numbers; JSON, Python's json and the API do not.
# Each starts with one of two capitals, found with memchr; "-NaN"/"Infinity" contain them.
_NONFINITE = ((b"N", b"NaN"), (b"I", b"Inf"))
_BLANK_BYTES = b" \t\r\n"
_BEFORE_VALUE = b":[,"


def _may_hold_nonfinite(block: bytes | bytearray, end: int) -> bool:
    """Whether ``block[:end]`` may hold a ``NaN``/``Inf``/``Infinity`` token (maybe with ``-``).

    Only called on blocks whose every line starts with ``{``: there a value token can only follow
    ``:``, ``[`` or ``,`` (then blanks, then an optional ``-``). ``NaN`` or ``Inf`` anywhere else
    is inside a string ("Information", "NaN values"), so prose does not cost the fast path. May
    say True for text that only looks like a token (``"a: Inf"`` in a string): the exact check
    then decides. Two ``bytes.find`` scans for a 3-byte needle cost ~4x as much as these.
    """
    find = block.find
    for first, token in _NONFINITE:
        i = find(first, 0, end)
        while i != -1:
            if block.startswith(token, i, end):
                j = i - 1
                if j >= 0 and block[j] == 0x2D:  # "-"
                    j -= 1
                while j >= 0 and block[j] in _BLANK_BYTES:
                    j -= 1
                if j < 0 or block[j] in _BEFORE_VALUE:
                    return True
            i = find(first, i + 1, end)
    return False


def _is_utf8(data: pa.Buffer | bytes | bytearray) -> bool:
    """Whether ``data`` is valid UTF-8 (the same verdict as ``bytes(data).decode("utf-8")``),
    checked by Arrow without a copy: ~5x faster than decoding, and no str as large as the block.
    Used by the request validator and by the join's block reader."""
    import pyarrow as pa

    buffer = data if isinstance(data, pa.Buffer) else pa.py_buffer(data)
    whole = pa.Array.from_buffers(
        pa.large_string(),
        1,
        [None, pa.py_buffer(array.array("q", [0, buffer.size])), buffer],
    )
    try:
        whole.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _human(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB ({n:,} bytes)" if n >= 1024 * 1024 else f"{n:,} bytes"


def _check_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("custom_id", pa.string()),
            ("url", pa.string()),
            ("body", pa.struct([("model", pa.string())])),
        ]
    )


def _isdir(fs: Any, path: str) -> bool:
    try:
        return bool(fs.isdir(path))
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# Reading a user's table
# --------------------------------------------------------------------------------------------
_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz", ".json.gz")


class _Source:
    """A user's table: Arrow-like (record batches) or a JSONL file (rows as dicts)."""

    def __init__(self, source: Any, storage_options: Mapping[str, Any] | None) -> None:
        self.name = "table"
        self.arrow: Any = None  # a pyarrow Table, or a Parquet location
        self.jsonl: str | None = None
        self.storage_options = storage_options
        if isinstance(source, (str, os.PathLike)):
            location = str(os.fspath(source))
            self.name = location
            fs, path = filesystem(location, storage_options)
            if not fs.exists(path):
                raise InvalidRequestFileError(f"{location}: does not exist; check the path.")
            kind = _sniff(fs, path)
            if kind == "jsonl":
                self.jsonl = location
            else:
                self.arrow = (fs, path)
            return
        self.arrow = _to_arrow_table(source)

    def column_names(self) -> list[str] | None:
        """Column names, or None for JSONL (known only row by row)."""
        if self.jsonl is not None:
            return None
        if isinstance(self.arrow, tuple):
            import pyarrow.parquet as pq

            fs, path = self.arrow
            return list(pq.ParquetDataset(path, filesystem=fs).schema.names)
        return list(self.arrow.column_names)

    def rows(self, columns: list[str]) -> Iterator[tuple[Callable[[], str], dict[str, Any]]]:
        """(label maker, row) pairs holding only ``columns``; the label names the row for errors."""
        if self.jsonl is not None:
            yield from self._jsonl_rows()
            return

        if isinstance(self.arrow, tuple):
            fs, path = self.arrow
            batches = _parquet_batches(fs, path, columns)
        else:
            batches = iter(self.arrow.select(columns).to_batches(max_chunksize=10_000))
        index = 0
        for batch in batches:
            struct_columns = {
                name
                for name, typ in zip(batch.schema.names, batch.schema.types, strict=True)
                if _is_nested(typ)
            }
            for row in batch.to_pylist():
                for name in struct_columns:
                    # Arrow structs give every row every key; drop the nulls it made up.
                    row[name] = _drop_nulls(row[name])

                def label(pos: int = index) -> str:
                    return f"{self.name}, row {pos} (0-based)"

                yield label, row
                index += 1

    def _jsonl_rows(self) -> Iterator[tuple[Callable[[], str], dict[str, Any]]]:
        import fsspec

        assert self.jsonl is not None
        with fsspec.open(
            self.jsonl, "rb", compression="infer", **dict(self.storage_options or {})
        ) as handle:
            for line_no, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue  # a user's table, not a batch file: blank lines are harmless here
                where = f"{self.name}, line {line_no}"
                try:
                    row = _DECODER.decode(raw.decode("utf-8"))
                except (UnicodeDecodeError, ValueError) as exc:
                    raise InvalidRequestFileError(
                        f"{where}: is not a valid JSON line ({exc}); fix the line."
                    ) from None
                if not isinstance(row, dict):
                    raise InvalidRequestFileError(
                        f"{where}: is a JSON {_json_type(row)}, not an object (a row)."
                    )

                def label(where: str = where) -> str:
                    return where

                yield label, row


def _parquet_batches(fs: Any, path: str, columns: list[str]) -> Iterator[Any]:
    """Record batches of a Parquet file, or of every Parquet file under a directory."""
    import pyarrow.parquet as pq

    if fs.isfile(path):
        files = [path]
    else:
        files = sorted(p for p in fs.find(path) if p.endswith(_PARQUET_SUFFIXES))
    for file in files:
        with fs.open(file, "rb") as handle:
            yield from pq.ParquetFile(handle).iter_batches(batch_size=10_000, columns=columns)


def _sniff(fs: Any, path: str) -> str:
    """ "parquet" or "jsonl", from the suffix, else from the first bytes."""
    lower = path.lower()
    if lower.endswith(_PARQUET_SUFFIXES) or fs.isdir(path):
        return "parquet"
    if lower.endswith(_JSONL_SUFFIXES):
        return "jsonl"
    with fs.open(path, "rb") as handle:
        head = handle.read(4)
    return "parquet" if head == b"PAR1" else "jsonl"


def _to_arrow_table(source: Any) -> Any:
    import pyarrow as pa

    if isinstance(source, pa.Table):
        return source
    if isinstance(source, pa.RecordBatch):
        return pa.Table.from_batches([source])
    # pandas is detected by its module, so that pandas is never imported here.
    if type(source).__module__.split(".")[0] == "pandas" and hasattr(source, "columns"):
        return pa.Table.from_pandas(source, preserve_index=False)
    if hasattr(source, "__arrow_c_stream__"):  # polars, DuckDB, ... (the Arrow PyCapsule protocol)
        return pa.table(source)
    raise TypeError(
        f"Cannot read requests from a {type(source).__name__}: pass a pyarrow Table, a pandas "
        "DataFrame, or the path/URL of a Parquet or JSONL file."
    )


def _is_nested(typ: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_struct(typ) or pa.types.is_list(typ) or pa.types.is_large_list(typ))


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _id_text(value: Any) -> str | None:
    """The custom_id text of a key value: strings as they are, other scalars through ``str``."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


# --------------------------------------------------------------------------------------------
# build_requests
# --------------------------------------------------------------------------------------------
def build_requests(
    source: Any,
    *,
    template: RequestTemplate | None = None,
    id_column: str | None = None,
    endpoint: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield batch requests ``{"custom_id": ..., "body": {...}}`` from a user's table, lazily.

    Two shapes are understood:

    * The table already has ``custom_id`` and ``body`` columns (``body`` a struct/dict or a JSON
      string); other columns are ignored. A non-string ``custom_id`` (e.g. an int) becomes its
      ``str``. Keys that Arrow filled with null in a struct ``body`` are dropped (store ``body`` as
      a JSON string to keep explicit nulls).
    * ``template`` (and ``id_column``) build them: ``custom_id = str(row[id_column])``, and the
      body from the template and ``row[template.prompt_column]``. Without ``id_column`` an existing
      ``custom_id`` column is used.

    Args:
        source: a pyarrow Table, a pandas DataFrame (or anything speaking the Arrow PyCapsule
            stream protocol), or the path/URL of a Parquet file/directory or a JSONL file.
        template: how to build bodies; None when the table holds ``custom_id`` and ``body``.
        id_column: the key column giving ``custom_id`` (template mode).
        endpoint: overrides ``template.endpoint`` (template mode).
        storage_options: passed to fsspec for URLs.

    Raises:
        InvalidRequestFileError: a row without id or prompt, or with a body that is not valid JSON,
            naming the row. The full batch rules (unique ids, lengths, models) are checked by
            :func:`write_request_chunks`.
    """
    table = _Source(source, storage_options)
    names = table.column_names()
    if template is None:
        if names is not None and not {"custom_id", "body"} <= set(names):
            raise InvalidRequestFileError(
                f"{table.name}: has no 'custom_id' and 'body' columns (columns: {names}); pass "
                "template=RequestTemplate(model=..., prompt_column=...) and id_column=... to "
                "build the requests from your own columns."
            )
        yield from _prebuilt(table)
        return
    if endpoint is not None and endpoint != template.endpoint:
        template = replace(template, endpoint=endpoint)
    if id_column is None:
        if names is not None and "custom_id" not in names:
            raise InvalidRequestFileError(
                f"{table.name}: pass id_column= (the column that identifies a row; it becomes "
                "custom_id) or add a 'custom_id' column."
            )
        id_column = "custom_id"
    wanted = [id_column, template.prompt_column]
    if names is not None:
        absent = [c for c in dict.fromkeys(wanted) if c not in names]
        if absent:
            raise InvalidRequestFileError(
                f"{table.name}: has no column {absent[0]!r} (columns: {names}); check id_column "
                "and RequestTemplate.prompt_column."
            )
    for label, row in table.rows(list(dict.fromkeys(wanted))):
        custom_id = _id_text(row.get(id_column))
        if custom_id is None:
            raise InvalidRequestFileError(
                f"{label()}: the id column {id_column!r} is null; every row needs an id (it "
                "becomes custom_id, on which the results are joined)."
            )
        prompt = row.get(template.prompt_column)
        if not isinstance(prompt, str):
            what = "null" if prompt is None else f"a {type(prompt).__name__}, not text"
            raise InvalidRequestFileError(
                f"{label()}: custom_id {custom_id!r} has a prompt column "
                f"{template.prompt_column!r} that is {what}; fill or drop such rows first."
            )
        yield {"custom_id": custom_id, "body": template.build_body(prompt)}


def _prebuilt(table: _Source) -> Iterator[dict[str, Any]]:
    for label, row in table.rows(["custom_id", "body"]):
        if "custom_id" not in row or "body" not in row:
            raise InvalidRequestFileError(
                f"{label()}: has no 'custom_id' and 'body'; every row needs both (or use a "
                "RequestTemplate)."
            )
        custom_id = row["custom_id"]
        if isinstance(custom_id, int) and not isinstance(custom_id, bool):
            custom_id = str(custom_id)
        body = row["body"]
        if isinstance(body, bytes):
            body = body.decode("utf-8", errors="replace")
        if isinstance(body, str):
            try:
                body = _DECODER.decode(body)
            except ValueError as exc:
                raise InvalidRequestFileError(
                    f"{label()}: custom_id {custom_id!r} has a body string that is not valid "
                    f"JSON ({exc}); store the body as a JSON object string or a struct."
                ) from None
        yield {"custom_id": custom_id, "body": body}


# --------------------------------------------------------------------------------------------
# write_request_chunks
# --------------------------------------------------------------------------------------------
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
    _check_endpoint(endpoint, "write_request_chunks")
    rules = _Rules(
        endpoint=endpoint,
        require_single_model=require_single_model,
        label="request #{}".format,
        ref="request #{}".format,
    )
    writer = _ChunkWriter(destination, storage_options, prefix, max_requests, max_bytes)
    try:
        for pos, request in enumerate(requests, start=1):
            if not isinstance(request, Mapping):
                raise InvalidRequestFileError(
                    f"request #{pos}: is a {type(request).__name__}, not a mapping like "
                    f"{_EXAMPLE_LINE}."
                )
            custom_id, model, _ = rules.check_object(
                request if isinstance(request, dict) else dict(request), pos
            )
            try:
                text = json.dumps(
                    request, ensure_ascii=False, separators=(",", ":"), allow_nan=False
                )
            except (TypeError, ValueError) as exc:
                raise InvalidRequestFileError(
                    f"request #{pos}: custom_id {custom_id!r} has a body that is not "
                    f"JSON-serialisable ({exc}); convert such values (dates, decimals, NaN, "
                    "numpy numbers) to plain strings or numbers first."
                ) from None
            data = text.encode("utf-8") + b"\n"
            if len(data) > max_bytes:
                raise InvalidRequestFileError(
                    f"request #{pos}: custom_id {custom_id!r} is {len(data):,} bytes as JSON, over "
                    f"max_bytes={max_bytes:,}; shorten the request."
                )
            writer.add(data, custom_id, model)
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

    def _open(self) -> None:
        self.path = join(self.destination, f"{self.prefix}-{len(self.chunks):05d}.jsonl")
        self.handle = open_pending(self.path, self.storage_options, stage_locally=True)
        self.files.append(self.handle)
        self.digest = hashlib.sha256()
        self.n = self.size = 0
        self.first = self.last = ""
        self.models: dict[str, None] = {}

    def _close(self) -> None:
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
        assert self.handle is not None
        self.handle.write(data)
        self.digest.update(data)
        self.n += 1
        self.size += len(data)
        self.last = custom_id
        self.models.setdefault(model)

    def finish(self) -> list[RequestChunk]:
        if self.handle is not None:
            self._close()
        return self.chunks

    def abort(self) -> None:
        for pending in self.files:
            pending.abort()


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


# --------------------------------------------------------------------------------------------
# The user's own columns, keyed by custom_id (for join_results)
# --------------------------------------------------------------------------------------------
def input_columns_table(
    source: Any,
    *,
    id_column: str | None = None,
    columns: Iterable[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> pa.Table:
    """The user's columns keyed by ``custom_id``, as :func:`build_requests` names the rows.

    ``custom_id`` comes first: ``str(row[id_column])`` exactly as :func:`build_requests` makes it,
    or the table's own ``custom_id`` column. The ``body`` column, if any, is left out. Give the
    result (or a Parquet file of it, see :func:`write_input_columns`) to ``join_results`` as
    ``input_columns`` to get these columns beside each result.

    Args:
        source: the same source given to :func:`build_requests`.
        id_column: the key column (template mode); None to use an existing ``custom_id``.
        columns: the columns to keep (default: all but ``body``).
        storage_options: passed to fsspec for URLs.
    """
    import pyarrow as pa

    table_source = _Source(source, storage_options)
    if table_source.jsonl is not None:
        rows = [row for _, row in table_source.rows([])]
        table = pa.Table.from_pylist(rows)
    elif isinstance(table_source.arrow, tuple):
        import pyarrow.parquet as pq

        fs, path = table_source.arrow
        table = pq.read_table(path, filesystem=fs)
    else:
        table = table_source.arrow
    key = id_column or "custom_id"
    if key not in table.column_names:
        raise InvalidRequestFileError(
            f"{table_source.name}: has no column {key!r} (columns: {table.column_names})."
        )
    keep = list(columns) if columns is not None else [c for c in table.column_names if c != "body"]
    missing = [c for c in keep if c not in table.column_names]
    if missing:
        raise InvalidRequestFileError(f"{table_source.name}: has no column {missing[0]!r}.")
    ids = pa.array([_id_text(v) for v in table.column(key).to_pylist()], pa.string())
    if ids.null_count:
        raise InvalidRequestFileError(
            f"{table_source.name}: the id column {key!r} has {ids.null_count} null value(s); "
            "every row needs an id."
        )
    keep = [c for c in keep if c != "custom_id"]
    return pa.Table.from_arrays([ids, *(table.column(c) for c in keep)], names=["custom_id", *keep])


def write_input_columns(
    source: Any,
    destination: str | os.PathLike[str],
    *,
    id_column: str | None = None,
    columns: Iterable[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write :func:`input_columns_table` as one Parquet file (published atomically); return it."""
    import pyarrow.parquet as pq

    table = input_columns_table(
        source, id_column=id_column, columns=columns, storage_options=storage_options
    )
    location = str(os.fspath(destination))
    with open_pending(location, storage_options, stage_locally=True) as pending:
        assert pending.local_path is not None  # always, with stage_locally
        pq.write_table(table, pending.local_path)
    return location
