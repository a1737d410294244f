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

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dagster_together.client.errors import InvalidRequestFileError

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
    "check_request_file",
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
_READ_SIZE = 8 * 1024 * 1024  # bytes read per call: big enough for speed, small enough for memory
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

    Memory stays flat whatever the file size (it is read in 8 MiB blocks); the sha256 of the raw
    bytes is computed in the same pass. Blocks are first checked with pyarrow's JSON parser; any
    block it has doubts about is re-checked line by line with :mod:`json`, which finds the exact
    line and writes the message.

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
    fs, fs_path = _filesystem(name, storage_options)
    try:
        is_file = fs.isfile(fs_path)
    except OSError:
        is_file = False
    if not is_file:
        kind = "is a directory, not a file" if _isdir(fs, fs_path) else "does not exist"
        where = "check the path and storage_options." if "://" in name else "check the path."
        raise InvalidRequestFileError(f"{name}: {kind}; {where}")

    digest = hashlib.sha256()
    with fs.open(fs_path, "rb") as handle:
        carry = b""
        while True:
            chunk = handle.read(_READ_SIZE)
            if not chunk:
                break
            digest.update(chunk)  # the raw bytes, exactly what an upload sends
            state.n_bytes_read += len(chunk)
            data = carry + chunk if carry else chunk
            cut = data.rfind(b"\n") + 1
            carry = data[cut:]
            if cut:
                state.feed(data[:cut])
            if state.n_bytes + len(carry) > max_bytes:
                # A line longer than the byte limit (no newline yet): no need to read on.
                state.over_bytes()
        if carry:
            state.feed(carry)  # the last line without its newline: allowed
    state.finish()
    return RequestFileStats(
        path=name,
        n_lines=state.n_lines,
        n_bytes=state.n_bytes,
        sha256=digest.hexdigest(),
        models=tuple(state.rules.models),
    )


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

    def feed(self, block: bytes) -> None:
        """Check a block of whole lines (the last one may lack its newline only at EOF)."""
        n = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
        # Cut the block where a limit is crossed: the lines before it are checked first, so the
        # first fault in file order is the one reported.
        fault: str | None = None
        if n > self.max_lines - self.n_lines:
            n = self.max_lines - self.n_lines
            block = block[: _nth_line_end(block, n)]
            fault = "lines"
        if self.n_bytes + len(block) > self.max_bytes:
            end, n = _cut_bytes(block, self.max_bytes - self.n_bytes)
            block = block[:end]
            fault = "bytes"
        if n:
            if self.leading_blank is not None or not self._fast(block, n):
                self._exact(block)
            self.n_lines += n
            self.n_bytes += len(block)
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

    def _fast(self, block: bytes, n: int) -> bool:
        """Vectorised check of a block with pyarrow; True if every line is certainly valid.

        False sends the block to the exact line-by-line check, which writes the message. This
        path must never accept what the exact path refuses, hence the guards below.
        """
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.json as pa_json

        # Every line must start with "{": this also keeps blank lines and bare ``null`` lines away
        # from pyarrow (which turns ``null`` into an all-null row, or crashes on it alone).
        if not block.startswith(b"{") or block.count(b"\n{") != n - 1:
            return False
        if b"NaN" in block or b"Infinity" in block:
            return False  # maybe a bare NaN token, which pyarrow accepts and JSON does not
        if not block.isascii():
            try:
                block.decode("utf-8")  # pyarrow does not check the fields it ignores
            except UnicodeDecodeError:
                return False
        try:
            table = pa_json.read_json(
                pa.BufferReader(block if block.endswith(b"\n") else block + b"\n"),
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


def _nth_line_end(block: bytes, k: int) -> int:
    """Offset just past the k-th line of ``block`` (0 for k == 0)."""
    end = 0
    for _ in range(k):
        nl = block.find(b"\n", end)
        end = len(block) if nl < 0 else nl + 1
    return end


def _cut_bytes(block: bytes, room: int) -> tuple[int, int]:
    """Longest prefix of whole lines of at most ``room`` bytes: (offset, number of lines)."""
    end = k = 0
    while True:
        nl = block.find(b"\n", end)
        nxt = len(block) if nl < 0 else nl + 1
        if nxt > room or nxt == end:
            return end, k
        end, k = nxt, k + 1


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


# --------------------------------------------------------------------------------------------
# fsspec helpers
# --------------------------------------------------------------------------------------------
def _filesystem(location: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    import fsspec.core

    return fsspec.core.url_to_fs(location, **dict(storage_options or {}))


def _isdir(fs: Any, path: str) -> bool:
    try:
        return bool(fs.isdir(path))
    except OSError:
        return False
