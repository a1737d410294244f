"""``check_request_file``: validate a batch input JSONL file in one streaming pass.

Decisions worth knowing:

* Blank lines are refused, wherever they are (JSONL is one JSON object per line, and the API
  reads it strictly). A missing newline after the last line is fine; ``\\r\\n`` line ends are fine.
* ``NaN``/``Infinity`` are not JSON and are refused, although Python's ``json`` would read them.
* An optional per-line ``"url"`` (the OpenAI batch format) must name a supported endpoint, the same
  one on every line, and match ``endpoint`` when that is given.
* ``custom_id`` length is counted in characters (code points), as Python's ``len`` does.
"""

from __future__ import annotations

import array
import bisect
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dagster_together.client.errors import InvalidRequestFileError
from dagster_together.requests.rules import (
    _DECODER,
    _EXAMPLE_LINE,
    BATCH_PURPOSE,
    MAX_BATCH_BYTES,
    MAX_CUSTOM_ID_LENGTH,
    MAX_REQUESTS_PER_BATCH,
    _Rules,
    check_endpoint,
    is_utf8,
)
from dagster_together.storage import filesystem

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

# Bytes read per call. 2 MiB is as fast as 8 MiB, and pyarrow's parse of an 8 MiB block made the
# check of a 100 MB file hold +86 MB of RSS (+32 MB at 2 MiB).
_READ_SIZE = 2 * 1024 * 1024


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
    check_endpoint(endpoint, name)
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
        if not buf.isascii() and not is_utf8(block):
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
