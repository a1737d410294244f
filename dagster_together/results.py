"""Join a batch's outputs back onto its inputs: streaming JSONL -> Arrow -> Parquet.

:func:`join_results` writes one Parquet row per input ``custom_id``, in input order, whatever
order, gaps, duplicates or junk the output and error files hold, and returns a
:class:`JoinSummary` (counts per status, unknown and duplicate ids, malformed lines, tokens by
model, a preview).

How it stays fast and small (memory: the inputs' ids plus a few blocks of output, never the
whole output; peak RSS does not grow with the batch beyond those ids):

1. Outputs and errors start to be read at once by a background thread, in 4 MiB blocks of
   whole lines. Each block is parsed by pyarrow's JSON reader with an explicit schema of the
   fields we extract (unknown fields are ignored) and the raw lines are kept for the
   ``response`` column. A block pyarrow cannot read (junk, a truncated line, a field of an
   unexpected type) is split in halves until the bad lines are isolated; those few lines are
   read with :mod:`json`, and lines that are not a JSON object with a ``custom_id`` are
   recorded in ``malformed_lines`` (and logged).
2. Meanwhile the inputs are read the same way; their columns go to a local Arrow IPC spill file
   in input order and only their ids stay in memory, sorted, for lookups
   (``pyarrow.compute.search_sorted``).
3. Each result row is looked up among the input ids and spilled, by input position, into
   buckets (consecutive ranges of inputs, about 4 MiB of output each): one local file, one
   ``writev`` of Arrow buffers per bucket a block touches.
4. Buckets are assembled one at a time, in input order (one ``preadv`` per segment straight into
   new Arrow buffers): the first occurrence of each id wins, inputs without a result get
   ``missing`` / ``expired`` / ``cancelled``, and the rows go to the Parquet file (row groups of
   about 8 MiB) from a writer thread. The file is written under a temporary name and published
   at the end (``os.replace`` locally, one upload for object stores): nothing appears at the
   destination unless the whole join succeeded.

The spill needs about the size of the outputs plus the inputs on the local temporary directory
(``TMPDIR``); it is removed whatever happens.

This module imports neither Dagster nor httpx; pyarrow is imported inside the functions.
"""

from __future__ import annotations

import array
import collections
import functools
import json
import logging
import math
import os
import posixpath
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from dagster_together.client.errors import InvalidRequestFileError, TogetherError
from dagster_together.requests import _filesystem, _json_type, _parent, _Staging

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = [
    "REQUEST_COLUMNS",
    "RESULT_COLUMNS",
    "STATUSES",
    "JoinSummary",
    "MalformedResultError",
    "join_results",
]

logger = logging.getLogger(__name__)

STATUSES = ("succeeded", "failed", "missing", "expired", "cancelled")
"""Every status a row can have, in the order the summary lists them."""

RESULT_COLUMNS = (
    "status",
    "content",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "model",
    "error",
    "error_code",
    "response",
)
"""Columns added after the input columns (an input column of the same name becomes ``input_<name>``)."""

REQUEST_COLUMNS = ("request_model", "prompt")
"""Input columns made from a request JSONL file: the body's model and the last user message (or
the completions prompt). The raw request lines are not copied: they stay in the input file (the
results asset keeps it beside the results), one line per ``custom_id``."""

_READ_SIZE = 2 * 1024 * 1024  # bytes per block of lines
_PARSE_WORKERS = 2  # blocks parsed at once, each by one thread
_SPILL_BYTES = 6 * 1024 * 1024  # extracted rows gathered before they are spilled
_BUCKET_BYTES = 4 * 1024 * 1024  # output bytes per bucket: what one assembly step holds
# Buckets are gathered into row groups of about this size (in memory; ~1 MB compressed): the
# assembly holds one group being gathered and one being encoded, the phase where the 300k join
# peaked (8 MiB: 269-276 MB, 4 MiB: 254 MB, same speed).
_ROW_GROUP_BYTES = 4 * 1024 * 1024
_MAX_BUCKETS = 256
_READ_AHEAD = 2  # output blocks parsed ahead (while the inputs are read), beside those in work
_TRIM_EVERY = 64  # blocks or buckets between two hand-backs of freed memory to the OS (each
# hand-back is paid again in page faults when the memory is used next: rarely is enough)
_SLOW_LINES = 32  # below this many lines a failing block is read line by line
_MAX_RECORDED = 100  # malformed lines / id examples kept in the summary
_MAX_LOGGED = 20  # malformed lines logged one by one


class MalformedResultError(TogetherError, ValueError):
    """An output or error file holds a line that is not a result (raised with ``strict=True``)."""


@dataclass(frozen=True)
class JoinSummary:
    """What :func:`join_results` wrote. JSON-able with :meth:`to_dict`.

    Attributes:
        destination: the Parquet location written.
        n_inputs: number of input requests.
        n_rows: rows written (always ``n_inputs``).
        counts: rows per status, every status in :data:`STATUSES` present.
        unknown_ids: output/error lines whose ``custom_id`` is not an input (ignored).
        duplicate_ids: output/error lines ignored because their ``custom_id`` already had a result
            earlier (output files first, in the order given, then error files; first one wins).
        malformed_lines: ``(location, line number, reason)`` of lines that are not results, the
            first 100.
        n_malformed_lines: how many there were in all.
        tokens_by_model: ``{model: {prompt_tokens, completion_tokens, total_tokens}}`` over the
            rows written (the response's model; ``"unknown"`` when it has none).
        unknown_id_examples: up to 100 of the unknown ids.
        duplicate_id_examples: up to 100 of the duplicated ids.
        columns: ``(name, Arrow type)`` of every column written.
        preview_rows: the first rows (``custom_id``, ``status``, prompt and content shortened,
            ``error``).
        batch_status: the batch status the statuses were decided with.
    """

    destination: str
    n_inputs: int
    n_rows: int
    counts: dict[str, int]
    unknown_ids: int = 0
    duplicate_ids: int = 0
    malformed_lines: tuple[tuple[str, int, str], ...] = ()
    n_malformed_lines: int = 0
    tokens_by_model: dict[str, dict[str, int]] = field(default_factory=dict)
    unknown_id_examples: tuple[str, ...] = ()
    duplicate_id_examples: tuple[str, ...] = ()
    columns: tuple[tuple[str, str], ...] = ()
    preview_rows: tuple[dict[str, Any], ...] = ()
    batch_status: str | None = None

    @property
    def complete(self) -> bool:
        """Every input has exactly one row and no output line was unknown, duplicate or malformed."""
        return (
            self.n_rows == self.n_inputs
            and not self.unknown_ids
            and not self.duplicate_ids
            and not self.n_malformed_lines
        )

    @property
    def error_rate(self) -> float:
        """Share of rows that did not succeed (0.0 for no rows)."""
        return 1.0 - self.counts.get("succeeded", 0) / self.n_rows if self.n_rows else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field (tuples become lists)."""
        return json.loads(json.dumps(asdict(self), default=str))

    def preview(self, n: int = 5) -> str:
        """The first ``n`` rows as a small Markdown table."""
        rows = self.preview_rows[:n]
        if not rows:
            return "_no rows_"
        names = list(rows[0])
        lines = ["| " + " | ".join(names) + " |", "|" + " --- |" * len(names)]
        for row in rows:
            cells = ("" if row[k] is None else str(row[k]) for k in names)
            lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
        return "\n".join(lines)


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


# --------------------------------------------------------------------------------------------
# join_results
# --------------------------------------------------------------------------------------------
Location = str | os.PathLike
Locations = Location | Sequence[Location] | None


def join_results(
    *,
    inputs: Any,
    outputs: Locations,
    destination: str | os.PathLike[str],
    errors: Locations = None,
    storage_options: Mapping[str, Any] | None = None,
    batch_status: str | None = None,
    input_columns: Any = None,
    strict: bool = False,
) -> JoinSummary:
    """Write one Parquet row per input ``custom_id`` with its result, and summarise.

    Args:
        inputs: the batch input JSONL (a location, or a list of them read in order), or a table of
            ``custom_id`` plus the user's columns: a Parquet location, a pyarrow Table or a pandas
            DataFrame. It decides the rows and their order. From a request JSONL the input columns
            are ``request_model`` and ``prompt`` (the last user message, or the completions
            prompt); from a table, the table's own columns.
        outputs: output JSONL location(s); None or empty when the batch produced none.
        destination: the Parquet file to write (a path or URL ending in ``/`` gets
            ``results.parquet`` inside it).
        errors: error JSONL location(s), or None.
        storage_options: passed to fsspec for every URL.
        batch_status: the batch's final status. Inputs without any result get ``expired`` for
            ``EXPIRED``, ``cancelled`` for ``CANCELLED``, otherwise ``missing``.
        input_columns: more of the user's columns keyed by ``custom_id`` (a Parquet location or a
            table, e.g. from :func:`dagster_together.requests.write_input_columns`), added after
            the inputs' own columns; its ids that are not inputs are ignored. Held in memory.
        strict: raise :class:`MalformedResultError` on the first malformed output/error line
            instead of recording it in the summary (the default records and logs each one).

    Returns:
        A JoinSummary. Columns: ``custom_id``, the input columns, then :data:`RESULT_COLUMNS`:
        ``status`` (one of :data:`STATUSES`), ``content`` (``choices[0].message.content``, or
        ``choices[0].text``), ``finish_reason``, the three token counts, ``model`` (the
        response's), ``error`` and ``error_code`` (from the error line, or from a non-2xx
        ``status_code`` in an output line), and ``response`` (the raw output or error line).

    Raises:
        InvalidRequestFileError: the inputs are unreadable, or hold a duplicate or missing id.
        MalformedResultError: with ``strict=True``, for the first malformed line.
    """

    destination = str(os.fspath(destination))
    if destination.endswith("/") or os.path.isdir(destination):
        destination = destination.rstrip("/") + "/results.parquet"
    opts = dict(storage_options or {})
    default_status = {"EXPIRED": "expired", "CANCELLED": "cancelled"}.get(
        str(batch_status or "").upper(), "missing"
    )
    # Spill files (about the size of the outputs) go to the system temporary directory
    # (TMPDIR); they are removed whatever happens.
    spill_dir = tempfile.mkdtemp(prefix="dagster-together-join-")
    buckets = None
    report = _Report(strict)
    # Output files first, then error files: the first result seen for an id wins. Their
    # reading starts now, beside the inputs'.
    results = _read_results(_as_list(outputs) + _as_list(errors), opts, report)
    try:
        ins = _read_inputs(inputs, opts, spill_dir)
        if input_columns is not None:
            ins.add_columns(input_columns, opts)
        _give_back_memory()
        buckets = _Buckets(ins.n, _result_bytes(outputs, errors, opts), spill_dir)
        # Rows are spilled a few blocks at a time: each spill writes one segment per bucket it
        # touches, so bigger spills mean fewer, larger writes.
        held: list[pa.Table] = []
        held_bytes = 0
        for k, tables in enumerate(results, start=1):
            held.extend(tables)
            held_bytes += sum(t.nbytes for t in tables)
            if held_bytes >= _SPILL_BYTES:
                buckets.add(_concat(held), ins, report)
                held, held_bytes = [], 0
            if k % _TRIM_EVERY == 0:
                _give_back_memory()
        if held:
            buckets.add(_concat(held), ins, report)
        del held
        buckets.close_writers()
        ins.forget_ids()  # the lookups are done: the biggest per-input structure can go
        _give_back_memory()
        fields = _assemble(ins, buckets, destination, opts, default_status, report)
    finally:
        results.close()
        if buckets is not None:
            buckets.close()
        shutil.rmtree(spill_dir, ignore_errors=True)
        _give_back_memory()
    summary = JoinSummary(**{**fields, "batch_status": batch_status})
    logger.info(
        "Joined %s inputs into %s: %s; %s unknown, %s duplicate, %s malformed lines",
        summary.n_inputs,
        destination,
        ", ".join(f"{k} {v}" for k, v in summary.counts.items() if v),
        summary.unknown_ids,
        summary.duplicate_ids,
        summary.n_malformed_lines,
    )
    return summary


def _concat(tables: list[pa.Table]) -> pa.Table:
    import pyarrow as pa

    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def _give_back_memory() -> None:
    """Return freed memory to the OS, so that freed blocks do not pile up in the allocators.

    Arrow's pool is asked to release what it caches; glibc's ``malloc_trim`` does the same for
    the big Python buffers the reader used (where there is no glibc this does nothing).
    """
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def _as_list(value: Locations) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [str(os.fspath(value))]
    return [str(os.fspath(v)) for v in value]


def _result_bytes(outputs: Locations, errors: Locations, opts: dict[str, Any]) -> int:
    total = 0
    for location in _as_list(outputs) + _as_list(errors):
        fs, path = _filesystem(location, opts)
        try:
            total += int(fs.size(path) or 0)
        except (OSError, TypeError):
            pass  # a missing file is reported when it is read
    return total


class _Report:
    """Malformed lines, unknown and duplicate ids, as they are found."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.malformed: list[tuple[str, int, str]] = []
        self.n_malformed = 0
        self.unknown = 0
        self.unknown_examples: list[str] = []
        self.duplicates = 0
        self.duplicate_examples: list[str] = []

    def bad_line(self, location: str, line_no: int, reason: str) -> None:
        if self.strict:
            raise MalformedResultError(f"{location}, line {line_no}: {reason}")
        self.n_malformed += 1
        if len(self.malformed) < _MAX_RECORDED:
            self.malformed.append((location, line_no, reason))
        if self.n_malformed <= _MAX_LOGGED:
            logger.warning("%s, line %s: %s; line skipped", location, line_no, reason)
        elif self.n_malformed == _MAX_LOGGED + 1:
            logger.warning("More malformed lines: the summary counts them all.")

    def unknown_ids(self, count: int, examples: list[str]) -> None:
        self.unknown += count
        self.unknown_examples.extend(examples[: _MAX_RECORDED - len(self.unknown_examples)])

    def duplicate_ids(self, count: int, examples: list[str]) -> None:
        self.duplicates += count
        self.duplicate_examples.extend(examples[: _MAX_RECORDED - len(self.duplicate_examples)])


class _BadLines(list):
    """The malformed lines of one block, found on a parse thread; handed to the _Report in
    file order afterwards (``strict`` raises at once, as _Report does)."""

    def __init__(self, strict: bool) -> None:
        super().__init__()
        self.strict = strict

    def bad_line(self, location: str, line_no: int, reason: str) -> None:
        if self.strict:
            raise MalformedResultError(f"{location}, line {line_no}: {reason}")
        self.append((location, line_no, reason))


# --------------------------------------------------------------------------------------------
# Arrow values built without pyarrow's conversion of Python objects: that conversion imports
# pandas when it is installed (about 0.2 s), which nothing here needs.
# --------------------------------------------------------------------------------------------
def _int64s(values: array.array) -> pa.Array:
    import pyarrow as pa

    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


def _range(lo: int, hi: int) -> pa.Array:
    return _int64s(array.array("q", range(lo, hi)))


def _null(typ: pa.DataType) -> pa.Scalar:
    import pyarrow as pa

    return pa.nulls(1, typ)[0]


def _int(value: int) -> pa.Scalar:
    return _int64s(array.array("q", [value]))[0]


def _int32(value: int) -> pa.Scalar:
    import pyarrow as pa

    return pa.Array.from_buffers(pa.int32(), 1, [None, pa.py_buffer(array.array("i", [value]))])[0]


def _str(value: str) -> pa.Scalar:
    import pyarrow as pa

    data = value.encode()
    offsets = pa.py_buffer(array.array("i", [0, len(data)]))
    return pa.StringArray.from_buffers(1, offsets, pa.py_buffer(data))[0]


def _bool(value: bool) -> pa.Scalar:
    return _trues(1)[0] if value else _falses(1)[0]


def _falses(n: int) -> pa.Array:
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.is_valid(pa.nulls(n, pa.bool_()))


def _trues(n: int) -> pa.Array:
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.is_null(pa.nulls(n, pa.bool_()))


# --------------------------------------------------------------------------------------------
# A background thread one step ahead: pyarrow releases the GIL while it parses, writes and
# computes, so reading+parsing the next block overlaps with the work on the current one.
# --------------------------------------------------------------------------------------------
class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_DONE = object()


class _Prefetcher:
    """Items produced by a background thread, started at once, at most ``depth`` ahead.

    ``depth=1`` is a hand-over: the thread starts on the next item once the current one is
    taken, so at most two items are alive. A deeper queue lets the thread work ahead while the
    consumer is busy elsewhere (e.g. outputs parsed while the inputs are still being read).
    Errors in the thread are raised in the consumer; ``close`` stops the thread.
    """

    def __init__(self, items: Iterator[Any], depth: int = 1) -> None:
        self._slot: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._taken = threading.Event()
        self._depth = depth
        self._thread = threading.Thread(
            target=self._produce, args=(items,), name="dagster-together-read", daemon=True
        )
        self._thread.start()

    def _produce(self, items: Iterator[Any]) -> None:
        slot = self._slot
        try:
            for item in items:
                slot.put(item)
                while slot.unfinished_tasks >= self._depth and not self._stop.is_set():
                    self._taken.wait(0.05)  # until the consumer has taken enough
                self._taken.clear()
                if self._stop.is_set():
                    return
            slot.put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            slot.put(_Failed(exc))

    def __iter__(self) -> Iterator[Any]:
        try:
            while True:
                item = self._slot.get()
                self._slot.task_done()
                self._taken.set()
                if item is _DONE:
                    return
                if isinstance(item, _Failed):
                    raise item.exc
                yield item
                del item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():  # let a blocked producer finish
            try:
                self._slot.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()


def _prefetch(items: Iterator[Any]) -> Iterator[Any]:
    """Yield ``items``, produced by a background thread one item ahead (see _Prefetcher)."""
    yield from _Prefetcher(items, depth=1)


def _parallel(work: Callable[[Any], Any], items: Iterator[Any]) -> Iterator[Any]:
    """``work(item)`` for each item on ``_PARSE_WORKERS`` threads, results in the items' order.

    At most ``_PARSE_WORKERS`` items are in work (one more was measured ~4% faster but ~20 MB
    more at 1M requests), so memory holds a few blocks, not the file. pyarrow releases the GIL
    while it parses, so blocks are parsed on every core.
    """
    pool = ThreadPoolExecutor(
        max_workers=_PARSE_WORKERS, thread_name_prefix="dagster-together-parse"
    )
    pending: collections.deque[Any] = collections.deque()
    try:
        for item in items:
            pending.append(pool.submit(work, item))
            if len(pending) >= _PARSE_WORKERS:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------------
# Reading files as blocks of whole lines
# --------------------------------------------------------------------------------------------
class _Block:
    """Whole lines of a file: ``data`` ends with a newline, ``first_line`` is the number of the
    first line, ``unterminated`` tells that the last line had no newline in the file (one was
    added). Arrow cuts the block at its newlines once (``pieces``: the lines as binary, without
    their newline), in C; the line offsets (a Python loop) are only worked out for the slow
    path."""

    __slots__ = ("data", "pieces", "first_line", "unterminated", "_offsets")

    def __init__(self, data: bytes | bytearray, first_line: int, unterminated: bool) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        self.data = data
        whole = pa.Array.from_buffers(
            pa.large_binary(),
            1,
            [None, pa.py_buffer(array.array("q", [0, len(data)])), pa.py_buffer(data)],
        )
        pieces = pc.split_pattern(whole, b"\n").values
        self.pieces = pieces.slice(0, len(pieces) - 1)  # the last one follows the last newline
        self.first_line = first_line
        self.unterminated = unterminated
        self._offsets: array.array | None = None

    @property
    def n(self) -> int:
        return len(self.pieces)

    @property
    def offsets(self) -> array.array:
        """Start of every line and the end of the data."""
        if self._offsets is None:
            self._offsets = _line_offsets(self.data)
        return self._offsets

    def split(self) -> tuple[_Block, _Block] | None:
        """The block cut in two near its middle, on a line boundary; None for one line."""
        if self.n < 2:
            return None
        mid = self.offsets[self.n // 2]
        head = _Block(self.data[:mid], self.first_line, False)
        tail = _Block(self.data[mid:], self.first_line + head.n, self.unterminated)
        return head, tail

    def objects_only(self) -> bool:
        """True if every line starts with ``{`` and the block is UTF-8.

        pyarrow's reader must only see such blocks: it skips blank lines (line numbers would
        shift), turns a bare ``null`` line into a row of nulls, does not check the UTF-8 of the
        fields it ignores, and crashes on a file holding only ``null``.
        """
        import pyarrow.compute as pc

        if not self.n or not pc.all(pc.starts_with(self.pieces, b"{")).as_py():
            return False
        return self.data.isascii() or _is_utf8(self.data)

    def raw_lines(self) -> pa.Array:
        """The lines as strings without their newline (the block must be valid UTF-8)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        p = self.pieces
        raw = pa.Array.from_buffers(pa.large_string(), len(p), p.buffers(), offset=p.offset)
        raw = raw.cast(pa.string())
        if b"\r" in self.data:  # \r\n line ends: drop the \r too
            raw = pc.utf8_rtrim(raw, "\r")
        return raw

    def lines(self) -> Iterator[tuple[int, bytes]]:
        """(line number, raw line without newline), for the slow path."""
        data = self.data
        offsets = self.offsets
        for i in range(self.n):
            yield self.first_line + i, bytes(data[offsets[i] : offsets[i + 1] - 1])


def _line_blocks(fs: Any, path: str) -> Iterator[_Block]:
    """The file as blocks of whole lines, about ``_READ_SIZE`` bytes each.

    Each block is read straight into its own buffer after the previous block's unfinished line,
    then cut to its last newline: no further copy of the bulk of the data.
    """
    with fs.open(path, "rb") as handle:
        readinto = getattr(handle, "readinto", None)
        carry = b""
        line_no = 1
        while True:
            if readinto is not None:
                buf = bytearray(len(carry) + _READ_SIZE)
                buf[: len(carry)] = carry
                with memoryview(buf) as view, view[len(carry) :] as free:
                    got = readinto(free)
                end = len(carry) + (got or 0)
            else:
                chunk = handle.read(_READ_SIZE)
                got = len(chunk)
                buf = bytearray(carry) + chunk
                end = len(buf)
            if not got:
                break
            cut = buf.rfind(b"\n", 0, end) + 1
            carry = bytes(buf[cut:end])
            if not cut:
                continue  # a line longer than a block: read on
            del buf[cut:]  # shrinks in place
            block = _Block(buf, line_no, False)
            yield block
            line_no += block.n
        if carry:
            yield _Block(carry + b"\n", line_no, True)


def _is_utf8(data: bytes | bytearray) -> bool:
    """Whether ``data`` is valid UTF-8, checked by Arrow (SIMD, no copy): 7x faster than
    ``data.decode("utf-8")``, which also builds a str as large as the block (twice as large for
    text with characters above U+00FF): measured -0.4 s CPU on the 300k bench join."""
    import pyarrow as pa

    whole = pa.Array.from_buffers(
        pa.large_string(),
        1,
        [None, pa.py_buffer(array.array("q", [0, len(data)])), pa.py_buffer(data)],
    )
    try:
        whole.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _line_offsets(data: bytes | bytearray) -> array.array:
    """Start of every line and the end of the data (which ends with a newline)."""
    offsets = array.array("q", [0])
    append = offsets.append
    find = data.find
    i = find(b"\n")
    while i != -1:
        append(i + 1)
        i = find(b"\n", i + 1)
    return offsets


def _pa_read(block: _Block, schema: pa.Schema) -> pa.Table | None:
    """The block parsed by pyarrow with ``schema`` (other fields ignored), None if it refuses."""
    import pyarrow as pa
    import pyarrow.json as pa_json

    try:
        table = pa_json.read_json(
            pa.BufferReader(block.data),
            # One thread per block (blocks are parsed side by side), the block in one piece.
            read_options=pa_json.ReadOptions(
                use_threads=False, block_size=max(len(block.data), 1 << 20)
            ),
            parse_options=pa_json.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        return None
    return table if table.num_rows == block.n else None  # e.g. two objects on one line


def _last_user_text(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text(message.get("content"))
    return None


def _text(value: Any) -> str | None:
    """A text field as text: strings as they are, parts' texts joined, anything else as JSON."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        texts = [p["text"] for p in value if isinstance(p.get("text"), str)]
        if texts:
            return "\n".join(texts)
    return json.dumps(value, ensure_ascii=False)


def _json_error(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc.msg}, column {exc.colno})"
    return f"not valid JSON ({exc})"


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
class _Inputs:
    """The inputs: ids sorted for lookups, and their columns in input order (spilled or in memory)."""

    def __init__(self) -> None:
        self.n = 0
        self.sorted_ids: Any = None  # pa.Array of string, ascending
        self.order: Any = None  # input position of each sorted id (uint32)
        self.table: Any = None  # an in-memory table of input columns, or
        self.spill: str | None = None  # an IPC stream file of them
        self.extra: Any = None  # input_columns aligned to the inputs (in memory)
        self.request_columns = False

    def index_ids(self, chunks: list[Any], where: str) -> None:
        """Sort the ids (given as a list of arrays, emptied here) for lookups.

        Refuses nulls and duplicates. The copies are made one at a time and the previous one
        dropped, since this is the one structure that grows with the number of inputs.
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        ids = pa.chunked_array(chunks, pa.string()).combine_chunks()
        chunks.clear()
        self.n = len(ids)
        if ids.null_count:
            raise InvalidRequestFileError(
                f"{where}: {ids.null_count} input row(s) have no custom_id; every input needs one."
            )
        order = pc.sort_indices(ids)
        if self.n < 2**32:
            order = order.cast(pa.uint32())
        self.sorted_ids = ids.take(order)
        del ids
        self.order = order
        if self.n > 1:
            same = pc.equal(self.sorted_ids.slice(1), self.sorted_ids.slice(0, self.n - 1))
            if pc.any(same).as_py():
                first = pc.index(same, True).as_py()
                raise InvalidRequestFileError(
                    f"{where}: custom_id {self.sorted_ids[first].as_py()!r} appears more than once "
                    "in the inputs; results cannot be joined to it unambiguously."
                )

    def forget_ids(self) -> None:
        self.sorted_ids = self.order = None

    def lookup(self, ids: Any) -> Any:
        """Input position of each id (int64), null where the id is not an input."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if self.n == 0 or len(ids) == 0:
            return pa.nulls(len(ids), pa.int64())
        pos = pc.search_sorted(self.sorted_ids, ids)
        clipped = pc.min_element_wise(pos.cast(pa.int64()), _int(self.n - 1))
        found = pc.equal(self.sorted_ids.take(clipped), ids)
        where = self.order.take(clipped).cast(pa.int64())
        return pc.if_else(found, where, _null(pa.int64()))

    def add_columns(self, source: Any, opts: dict[str, Any]) -> None:
        """Align a table of ``custom_id`` + columns to the inputs (input_columns=)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        table = _load_table(source, opts)
        if "custom_id" not in table.column_names:
            raise InvalidRequestFileError(
                f"input_columns: has no 'custom_id' column (columns: {table.column_names})."
            )
        ids = table.column("custom_id").cast(pa.string())
        table = table.drop_columns(["custom_id"])
        idx = self.lookup(ids.combine_chunks())
        keep = pc.is_valid(idx)
        table = table.filter(keep).combine_chunks()  # one chunk: take() is far faster on it
        idx = idx.filter(keep)
        order = pc.sort_indices(idx)  # stable: the first row of an id stays first
        idx = idx.take(order)
        table = table.take(order)
        first = _first_of_runs(idx)
        self.extra = table.filter(first).take(_scatter(idx.filter(first), 0, self.n))

    def slices(self, bounds: list[tuple[int, int]]) -> Iterator[pa.Table]:
        """The input columns for each consecutive ``(lo, hi)`` range, in order."""
        import pyarrow as pa
        import pyarrow.ipc as ipc

        if self.table is not None:
            parts: Iterator[pa.Table] = (self.table.slice(lo, hi - lo) for lo, hi in bounds)
        else:
            parts = _stream_slices(ipc.open_stream(pa.OSFile(self.spill)), bounds)
        for (lo, hi), part in zip(bounds, parts, strict=True):
            if self.extra is not None:
                extra = self.extra.slice(lo, hi - lo)
                for name in extra.column_names:
                    part = part.append_column(_free_name(name, part.column_names), extra[name])
            yield part


def _stream_slices(reader: Any, bounds: list[tuple[int, int]]) -> Iterator[pa.Table]:
    """Consecutive row ranges of an IPC stream, reading it once."""
    import pyarrow as pa

    pending: list[Any] = []
    have = 0
    for lo, hi in bounds:
        need = hi - lo
        while have < need:
            batch = reader.read_next_batch()
            pending.append(batch)
            have += batch.num_rows
        table = pa.Table.from_batches(pending, schema=reader.schema)
        yield table.slice(0, need)
        rest = table.slice(need)
        pending = rest.to_batches() if rest.num_rows else []
        have = rest.num_rows


_RESERVED = set(RESULT_COLUMNS) | {"custom_id"}


def _free_name(name: str, taken: Iterable[str]) -> str:
    """``name``, or ``input_name`` (``input_input_name``...) if it clashes."""
    taken = set(taken) | _RESERVED
    while name in taken:
        name = f"input_{name}"
    return name


def _load_table(source: Any, opts: dict[str, Any]) -> pa.Table:
    import pyarrow.parquet as pq

    from dagster_together.requests import _to_arrow_table

    if isinstance(source, (str, os.PathLike)):
        fs, path = _filesystem(str(os.fspath(source)), opts)
        return pq.read_table(path, filesystem=fs)
    return _to_arrow_table(source)


def _read_inputs(inputs: Any, opts: dict[str, Any], spill_dir: str) -> _Inputs:
    import pyarrow as pa

    ins = _Inputs()
    locations = (
        _as_list(inputs)
        if isinstance(inputs, (str, os.PathLike))
        or (
            isinstance(inputs, (list, tuple))
            and all(isinstance(x, (str, os.PathLike)) for x in inputs)
        )
        else None
    )
    if locations is None:  # an in-memory table
        table = _load_table(inputs, opts)
        _user_table(ins, table, "inputs")
        return ins
    jsonl: list[str] = []
    parquet: list[str] = []
    for location in locations:
        fs, path = _filesystem(location, opts)
        if not fs.exists(path):
            raise InvalidRequestFileError(f"{location}: does not exist; check the inputs location.")
        from dagster_together.requests import _sniff

        (parquet if _sniff(fs, path) == "parquet" else jsonl).append(location)
    if parquet and jsonl:
        raise InvalidRequestFileError(
            f"inputs: mixes Parquet ({parquet[0]}) and JSONL ({jsonl[0]}); give one kind."
        )
    if parquet:
        tables = [_load_table(p, opts) for p in parquet]
        _user_table(ins, pa.concat_tables(tables, promote_options="default"), parquet[0])
        return ins
    _request_files(ins, jsonl, opts, spill_dir)
    return ins


def _user_table(ins: _Inputs, table: pa.Table, where: str) -> None:
    """Inputs given as a table of custom_id + the user's columns (held as they are)."""
    import pyarrow as pa

    if "custom_id" not in table.column_names:
        raise InvalidRequestFileError(
            f"{where}: has no 'custom_id' column (columns: {table.column_names}); the inputs "
            "need the ids the requests were sent with."
        )
    ids = table.column("custom_id")
    if not pa.types.is_string(ids.type):
        ids = ids.cast(pa.string())
    ins.index_ids(list(ids.chunks), where)
    names, columns = ["custom_id"], [ids]
    for name in table.column_names:
        if name != "custom_id":
            names.append(_free_name(name, names))
            columns.append(table.column(name))
    ins.table = pa.Table.from_arrays(columns, names=names)


def _request_schema() -> pa.Schema:
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    body = pa.struct(
        [("model", pa.string()), ("prompt", pa.string()), ("messages", pa.list_(message))]
    )
    return pa.schema([("custom_id", pa.string()), ("body", body)])


def _request_files(
    ins: _Inputs, locations: list[str], opts: dict[str, Any], spill_dir: str
) -> None:
    """Inputs given as request JSONL: spill request_model/prompt, keep the ids."""
    import pyarrow.ipc as ipc

    ins.spill = os.path.join(spill_dir, "inputs.arrows")
    ins.request_columns = True
    ids = []
    schema = _request_schema()
    with ipc.new_stream(ins.spill, _request_columns_schema()) as writer:
        for location in locations:
            fs, path = _filesystem(location, opts)

            # Background threads read, parse and extract; this one spills and keeps ids.
            def extract(b: _Block, location: str = location) -> list[pa.Table]:
                return _request_block(
                    b, location, _pa_read(b, schema) if b.objects_only() else None
                )

            extracted = _parallel(extract, _line_blocks(fs, path))
            for k, parts in enumerate(_prefetch(extracted), start=1):
                for part in parts:
                    # Small batches: a slice of the spill read back then pins little memory.
                    writer.write_table(part, max_chunksize=4096)
                    ids.extend(part.column("custom_id").chunks)
                if k % _TRIM_EVERY == 0:
                    _give_back_memory()
    ins.index_ids(ids, locations[0] if len(locations) == 1 else "inputs")


def _request_columns_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("custom_id", pa.string()),
            ("request_model", pa.string()),
            ("prompt", pa.string()),
        ]
    )


def _request_block(block: _Block, location: str, table: pa.Table | None) -> list[pa.Table]:
    """Input columns of a block of request lines (pyarrow, or json for lines it refuses)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if table is None or table.column("custom_id").null_count:
        halves = block.split() if block.n > _SLOW_LINES else None
        if halves is None:
            return [_request_block_slow(block, location)]
        schema = _request_schema()
        return [
            t
            for half in halves
            for t in _request_block(
                half, location, _pa_read(half, schema) if half.objects_only() else None
            )
        ]
    body = table.column("body").combine_chunks()
    prompt = pc.coalesce(
        _last_user_content(pc.struct_field(body, "messages")), pc.struct_field(body, "prompt")
    )
    return [
        pa.Table.from_arrays(
            [
                table.column("custom_id"),
                pc.struct_field(body, "model"),
                prompt.cast(pa.string()),
            ],
            schema=_request_columns_schema(),
        )
    ]


def _last_element(lists: Any) -> Any:
    """The last element of each list, null for a null or empty list."""
    import pyarrow as pa
    import pyarrow.compute as pc

    lengths = pc.coalesce(pc.list_value_length(lists), _int(0))
    ends = pc.subtract(lists.offsets.slice(1).cast(pa.int64()), _int(1))
    return lists.values.take(pc.if_else(pc.greater(lengths, _int(0)), ends, _null(pa.int64())))


def _first_element(lists: Any) -> Any:
    """The first element of each list, null for a null or empty list."""
    import pyarrow as pa
    import pyarrow.compute as pc

    lengths = pc.coalesce(pc.list_value_length(lists), _int(0))
    starts = lists.offsets.slice(0, len(lists)).cast(pa.int64())
    return lists.values.take(pc.if_else(pc.greater(lengths, _int(0)), starts, _null(pa.int64())))


def _last_user_content(messages: Any) -> Any:
    """Per row, the content of the last message whose role is ``user`` (vectorised)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    user = _str("user")
    last = _last_element(messages)
    last_is_user = pc.coalesce(pc.equal(pc.struct_field(last, "role"), user), _bool(False))
    content = pc.if_else(last_is_user, pc.struct_field(last, "content"), _null(pa.string()))
    no_messages = pc.coalesce(pc.equal(pc.list_value_length(messages), _int(0)), _bool(True))
    if pc.all(pc.or_(last_is_user, no_messages)).as_py():
        return content  # the usual case: the conversation ends with the user's message
    # Otherwise look at every message: keep the user ones, then the last of each row.
    flat = pc.list_flatten(messages)
    is_user = pc.coalesce(pc.equal(pc.struct_field(flat, "role"), user), _bool(False))
    parents = pc.list_parent_indices(messages).filter(is_user).cast(pa.int64())
    contents = pc.struct_field(flat, "content").filter(is_user)
    if len(parents) == 0:
        return pa.nulls(len(messages), pa.string())
    # The last user message of a row: where the next one belongs to another row.
    n = len(parents)
    last = pa.concat_arrays([pc.not_equal(parents.slice(0, n - 1), parents.slice(1)), _trues(1)])
    return contents.filter(last).take(_scatter(parents.filter(last), 0, len(messages)))


def _request_block_slow(block: _Block, location: str) -> pa.Table:
    import pyarrow as pa

    ids, models, prompts = [], [], []
    for line_no, raw in block.lines():
        where = f"{location}, line {line_no}"
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
            obj = json.loads(text)
        except UnicodeDecodeError:
            raise InvalidRequestFileError(
                f"{where}: is not UTF-8; the inputs must be the batch input JSONL."
            ) from None
        except ValueError as exc:
            raise InvalidRequestFileError(
                f"{where}: is {_json_error(exc)}; the inputs must be the batch input JSONL "
                "(check_request_file explains what is wrong with it)."
            ) from None
        custom_id = obj.get("custom_id") if isinstance(obj, dict) else None
        if not isinstance(custom_id, str):
            raise InvalidRequestFileError(
                f"{where}: has no string custom_id; the inputs must be the batch input JSONL."
            )
        body = obj.get("body")
        body = body if isinstance(body, dict) else {}
        model = body.get("model")
        prompt = _last_user_text(body.get("messages"))
        if prompt is None:
            prompt = _text(body.get("prompt"))
        ids.append(custom_id)
        models.append(model if isinstance(model, str) else None)
        prompts.append(prompt)
    schema = _request_columns_schema()
    columns = [ids, models, prompts]
    return pa.Table.from_arrays(
        [pa.array(c, t) for c, t in zip(columns, schema.types, strict=True)], schema=schema
    )


# --------------------------------------------------------------------------------------------
# Output and error lines
# --------------------------------------------------------------------------------------------
def _result_schema() -> pa.Schema:
    """What pyarrow extracts from an output or error line; other fields are ignored."""
    import pyarrow as pa

    error = pa.struct([("message", pa.string()), ("code", pa.string()), ("type", pa.string())])
    choice = pa.struct(
        [
            ("message", pa.struct([("content", pa.string())])),
            ("text", pa.string()),
            ("finish_reason", pa.string()),
        ]
    )
    usage = pa.struct(
        [
            ("prompt_tokens", pa.int64()),
            ("completion_tokens", pa.int64()),
            ("total_tokens", pa.int64()),
        ]
    )
    body = pa.struct(
        [
            ("model", pa.string()),
            ("choices", pa.list_(choice)),
            ("usage", usage),
            ("error", error),
        ]
    )
    response = pa.struct([("status_code", pa.int64()), ("body", body)])
    return pa.schema([("custom_id", pa.string()), ("response", response), ("error", error)])


def _row_schema() -> pa.Schema:
    """One extracted result: the result columns plus its custom_id."""
    import pyarrow as pa

    return pa.schema(
        [
            ("custom_id", pa.string()),
            ("status", pa.string()),
            ("content", pa.string()),
            ("finish_reason", pa.string()),
            ("prompt_tokens", pa.int64()),
            ("completion_tokens", pa.int64()),
            ("total_tokens", pa.int64()),
            ("model", pa.string()),
            ("error", pa.string()),
            ("error_code", pa.string()),
            ("response", pa.string()),
        ]
    )


def _read_results(locations: list[str], opts: dict[str, Any], report: _Report) -> _Prefetcher:
    """Extracted rows of output and error files, in order, from background threads.

    A reader thread starts at once, reads blocks and hands them to the parse threads (see
    :func:`_parallel`), which parse and extract them (none of it needs the inputs); it keeps up
    to ``_READ_AHEAD`` extracted blocks ahead, so the work starts while the inputs are still
    being read. The caller's thread then looks the ids up and spills. Each item is a list of
    tables.
    """
    schema = _result_schema()

    def located_blocks() -> Iterator[tuple[str, _Block]]:
        for location in locations:
            fs, path = _filesystem(location, opts)
            if not fs.exists(path):
                raise FileNotFoundError(
                    f"{location}: does not exist; check the outputs/errors location."
                )
            for b in _line_blocks(fs, path):
                yield location, b

    def extract(item: tuple[str, _Block]) -> tuple[list[pa.Table], _BadLines]:
        location, b = item
        bad = _BadLines(report.strict)
        table = _pa_read(b, schema) if b.objects_only() else None
        return [t for t in _result_block(b, location, bad, table) if t.num_rows], bad

    def blocks() -> Iterator[list[pa.Table]]:
        for tables, bad in _parallel(extract, located_blocks()):
            for args in bad:
                report.bad_line(*args)
            yield tables

    return _Prefetcher(blocks(), depth=_READ_AHEAD)


def _result_block(
    block: _Block, location: str, report: _Report | _BadLines, table: pa.Table | None = None
) -> list[pa.Table]:
    """Result rows of a block: ``table`` is pyarrow's parse of it (None: refused or not tried)."""
    if table is None:
        # Halve until the lines pyarrow refuses are isolated in small pieces read with json.
        halves = block.split() if block.n > _SLOW_LINES else None
        if halves is None:
            return [_result_block_slow(block, location, report)]
        return [
            t
            for half in halves
            for t in _result_block(
                half,
                location,
                report,
                _pa_read(half, _result_schema()) if half.objects_only() else None,
            )
        ]
    return [_extract(table, block, location, report)]


def _extract(
    table: pa.Table, block: _Block, location: str, report: _Report | _BadLines
) -> pa.Table:
    """The result columns of a parsed block (vectorised twin of :func:`_extract_one`)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    custom_id = table.column("custom_id").combine_chunks()
    response = table.column("response").combine_chunks()
    err = table.column("error").combine_chunks()
    body = pc.struct_field(response, "body")
    code = pc.struct_field(response, "status_code")
    body_err = pc.struct_field(body, "error")
    null_str = _null(pa.string())

    has_err = pc.is_valid(err)
    has_response = pc.is_valid(response)
    bad_code = pc.coalesce(
        pc.or_(pc.less(code, _int(200)), pc.greater_equal(code, _int(300))), _bool(False)
    )
    failed = pc.or_(
        pc.or_(has_err, pc.invert(has_response)), pc.or_(bad_code, pc.is_valid(body_err))
    )
    code_text = code.cast(pa.string())
    error = pc.coalesce(
        pc.struct_field(err, "message"),
        pc.struct_field(body_err, "message"),
        pc.if_else(
            bad_code, pc.binary_join_element_wise(_str("HTTP "), code_text, _str("")), null_str
        ),
        pc.if_else(pc.or_(has_err, has_response), null_str, _str(_NO_RESPONSE)),
    )
    error_code = pc.coalesce(
        pc.struct_field(err, "code"),
        pc.struct_field(err, "type"),
        pc.struct_field(body_err, "code"),
        pc.struct_field(body_err, "type"),
        pc.if_else(bad_code, code_text, null_str),
    )
    first = _first_element(pc.struct_field(body, "choices"))
    content = pc.coalesce(
        pc.struct_field(pc.struct_field(first, "message"), "content"),
        pc.struct_field(first, "text"),
    )
    usage = pc.struct_field(body, "usage")
    rows = pa.Table.from_arrays(
        [
            custom_id,
            pc.if_else(failed, _str("failed"), _str("succeeded")),
            content.cast(pa.string()),
            pc.struct_field(first, "finish_reason"),
            pc.struct_field(usage, "prompt_tokens"),
            pc.struct_field(usage, "completion_tokens"),
            pc.struct_field(usage, "total_tokens"),
            pc.struct_field(body, "model"),
            error,
            error_code,
            block.raw_lines(),
        ],
        schema=_row_schema(),
    )
    if custom_id.null_count:
        no_id = pc.is_null(custom_id)
        for i in pc.indices_nonzero(no_id).to_pylist():
            report.bad_line(location, block.first_line + i, "has no custom_id")
        rows = rows.filter(pc.invert(no_id))
    return rows


_NO_RESPONSE = "no response in the output line"


def _result_block_slow(block: _Block, location: str, report: _Report | _BadLines) -> pa.Table:
    """Read a few lines with :mod:`json`; record the lines that are not results."""
    import pyarrow as pa

    rows = []
    last_line = block.first_line + block.n - 1
    for line_no, raw in block.lines():
        if not raw.strip():
            continue  # nothing on the line, nothing lost
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            report.bad_line(location, line_no, f"is not UTF-8 (byte {exc.start + 1})")
            continue
        try:
            obj = json.loads(text)
        except ValueError as exc:
            reason = f"is {_json_error(exc)}"
            if block.unterminated and line_no == last_line:
                reason += "; it is the last line and has no newline: the file looks truncated"
            report.bad_line(location, line_no, reason)
            continue
        if not isinstance(obj, dict):
            report.bad_line(location, line_no, f"is a JSON {_json_type(obj)}, not an object")
            continue
        row = _extract_one(obj)
        if row is None:
            report.bad_line(location, line_no, "has no custom_id")
            continue
        rows.append((*row, text.rstrip("\r\n")))
    schema = _row_schema()
    columns: list[Sequence[Any]] = (
        list(zip(*rows, strict=True)) if rows else [[] for _ in schema.names]
    )
    return pa.Table.from_arrays(
        [pa.array(col, typ) for col, typ in zip(columns, schema.types, strict=True)],
        schema=schema,
    )


def _extract_one(obj: dict[str, Any]) -> tuple[Any, ...] | None:
    """The result columns of one parsed line (twin of :func:`_extract`), None without custom_id."""
    custom_id = obj.get("custom_id")
    if isinstance(custom_id, int) and not isinstance(custom_id, bool):
        custom_id = str(custom_id)
    if not isinstance(custom_id, str):
        return None
    err = obj.get("error")
    response = obj.get("response")
    response = response if isinstance(response, dict) else None
    code = _as_int(response.get("status_code")) if response else None
    body = response.get("body") if response else None
    body = body if isinstance(body, dict) else {}
    body_err = body.get("error")
    bad_code = code is not None and not 200 <= code < 300
    failed = err is not None or response is None or bad_code or body_err is not None
    error = _coalesce(
        _error_field(err, "message"),
        _error_field(body_err, "message"),
        f"HTTP {code}" if bad_code else None,
        None if err is not None or response is not None else _NO_RESPONSE,
    )
    error_code = _coalesce(
        _error_field(err, "code"),
        _error_field(err, "type"),
        _error_field(body_err, "code"),
        _error_field(body_err, "type"),
        str(code) if bad_code else None,
    )
    choices = body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    first = first if isinstance(first, dict) else {}
    message = first.get("message")
    content = _text(message.get("content")) if isinstance(message, dict) else None
    if content is None:
        content = _text(first.get("text"))
    usage = body.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    finish = first.get("finish_reason")
    model = body.get("model")
    return (
        custom_id,
        "failed" if failed else "succeeded",
        content,
        finish if finish is None or isinstance(finish, str) else str(finish),
        _as_int(usage.get("prompt_tokens")),
        _as_int(usage.get("completion_tokens")),
        _as_int(usage.get("total_tokens")),
        model if model is None or isinstance(model, str) else str(model),
        error,
        error_code,
    )


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _error_field(err: Any, key: str) -> str | None:
    if isinstance(err, dict):
        value = err.get(key)
        return value if value is None or isinstance(value, str) else json.dumps(value)
    if key == "message" and err is not None:
        return err if isinstance(err, str) else json.dumps(err)
    return None


def _coalesce(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


# --------------------------------------------------------------------------------------------
# Buckets: results spilled by input position
# --------------------------------------------------------------------------------------------
class _Buckets:
    """Result rows spilled to one local file in segments, read back bucket by bucket.

    A bucket is a consecutive range of inputs (about ``_BUCKET_BYTES`` of output). Each block of
    rows is sorted by bucket, and each bucket's rows are appended as one segment: for every
    column, its validity bytes, then its fixed-width values or its string lengths and bytes,
    all written by one ``writev`` straight from the Arrow buffers. Reading a bucket is one
    ``preadv`` per segment straight into the buffers of the new arrays. So the cost grows with
    the rows, not with blocks x buckets, and memory holds one block or one bucket at a time.

    Segments are appended in read order (output files, then error files), so within a bucket
    that order is kept and "first occurrence wins" needs no sequence number.
    """

    def __init__(self, n_inputs: int, result_bytes: int, spill_dir: str) -> None:
        import pyarrow as pa

        count = max(1, min(math.ceil(result_bytes / _BUCKET_BYTES), _MAX_BUCKETS, n_inputs or 1))
        self.size = max(1, math.ceil(n_inputs / count))  # inputs per bucket
        self.count = max(1, math.ceil(n_inputs / self.size))
        self.schema = pa.schema([*list(_row_schema())[1:], pa.field("idx", pa.int64())])
        self.strings = [pa.types.is_string(f.type) for f in self.schema]
        self.path = os.path.join(spill_dir, "results.spill")
        self.fd: int | None = None
        self.end = 0  # bytes written so far
        # Per bucket: (file offset, rows, byte length of each string column) of each segment.
        # Kept flat in int64 arrays (a million inputs make tens of thousands of segments):
        # offset, rows, then the byte length of each string column, per segment.
        self.width = 2 + sum(self.strings)
        self.segments = [array.array("q") for _ in range(self.count)]

    def bounds(self, n: int) -> list[tuple[int, int]]:
        return [(lo, min(lo + self.size, n)) for lo in range(0, n, self.size)] or [(0, 0)]

    def add(self, rows: pa.Table, ins: _Inputs, report: _Report) -> None:
        """Spill a block of extracted rows, one segment per bucket it touches."""
        import pyarrow as pa
        import pyarrow.compute as pc

        ids = rows.column("custom_id").combine_chunks()
        idx = ins.lookup(ids)
        if idx.null_count:
            unknown = pc.is_null(idx)
            examples = ids.filter(unknown).slice(0, _MAX_RECORDED).to_pylist()
            report.unknown_ids(idx.null_count, examples)
            known = pc.invert(unknown)
            rows, idx = rows.filter(known), idx.filter(known)
        if not rows.num_rows:
            return
        rows = rows.drop_columns(["custom_id"]).append_column("idx", idx)
        bucket = pc.divide(idx, _int(self.size))
        order = pc.sort_indices(bucket)  # stable: read order is kept within a bucket
        rows = rows.take(order).combine_chunks()
        bucket = bucket.take(order)
        counts = pc.value_counts(bucket)
        buckets = counts.field("values").to_pylist()
        cuts = [0]
        for count in counts.field("counts").to_pylist():
            cuts.append(cuts[-1] + count)
        # Per column: the buffers to slice, and for strings the byte offset of every cut.
        parts: list[tuple[memoryview, memoryview, memoryview | None, Any]] = []
        cut_array = _int64s(array.array("q", cuts))
        for column, is_string in zip(rows.columns, self.strings, strict=True):
            arr = column.chunk(0)
            valid = memoryview(pc.is_valid(arr).cast(pa.uint8()).buffers()[1])
            if is_string:
                lengths = pc.coalesce(pc.binary_length(arr), _int32(0)).buffers()[1]
                offsets = pa.Array.from_buffers(
                    pa.int32(), arr.offset + len(arr) + 1, [None, arr.buffers()[1]]
                )
                at = offsets.take(pc.add(cut_array, _int(arr.offset))).to_pylist()
                parts.append((valid, memoryview(lengths), memoryview(arr.buffers()[2]), at))
            else:
                values = memoryview(arr.buffers()[1])[arr.offset * 8 :]
                parts.append((valid, values, None, None))
        if self.fd is None:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        for k, b in enumerate(buckets):
            lo, hi = cuts[k], cuts[k + 1]
            views = []
            text_sizes = []
            for valid, values, data, at in parts:
                views.append(valid[lo:hi])
                if data is None:
                    views.append(values[lo * 8 : hi * 8])
                else:
                    views.append(values[lo * 4 : hi * 4])
                    views.append(data[at[k] : at[k + 1]])
                    text_sizes.append(at[k + 1] - at[k])
            size = _write_all(self.fd, views)
            self.segments[b].extend((self.end, hi - lo, *text_sizes))
            self.end += size

    def close_writers(self) -> None:
        """Finish writing (closing twice is harmless)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def read(self, bucket: int) -> pa.Table | None:
        """The rows of one bucket (None if it has none), read straight into new buffers."""
        import pyarrow as pa
        import pyarrow.compute as pc

        flat = self.segments[bucket] if bucket < self.count else array.array("q")
        w = self.width
        segments = [(flat[i], flat[i + 1], flat[i + 2 : i + w]) for i in range(0, len(flat), w)]
        if not segments:
            return None
        n = sum(rows for _, rows, _ in segments)
        texts = [sum(sizes[i] for _, _, sizes in segments) for i in range(sum(self.strings))]
        # Arrow's own memory (not Python's heap): freed blocks go back to one allocator.
        buffers = []  # per column: [valid, values or lengths, (data)]
        t = 0
        for is_string in self.strings:
            if is_string:
                buffer_sizes: tuple[int, ...] = (n, 4 * n, texts[t])
                t += 1
            else:
                buffer_sizes = (n, 8 * n)
            buffers.append([pa.allocate_buffer(size) for size in buffer_sizes])
        views = [[memoryview(b).cast("B") for b in column] for column in buffers]
        row = 0
        text_at = [0] * len(texts)
        with open(self.path, "rb", buffering=0) as handle:
            for offset, rows, sizes in segments:
                targets = []
                t = 0
                for is_string, column in zip(self.strings, views, strict=True):
                    targets.append(column[0][row : row + rows])
                    if is_string:
                        targets.append(column[1][4 * row : 4 * (row + rows)])
                        targets.append(column[2][text_at[t] : text_at[t] + sizes[t]])
                        text_at[t] += sizes[t]
                        t += 1
                    else:
                        targets.append(column[1][8 * row : 8 * (row + rows)])
                _read_all(handle, targets, offset)
                row += rows
        arrays = []
        for spec, is_string, column in zip(self.schema, self.strings, buffers, strict=True):
            valid = pa.Array.from_buffers(pa.uint8(), n, [None, column[0]])
            validity = None
            if pc.min(valid).as_py() == 0:
                validity = pc.not_equal(valid, _int(0)).buffers()[1]
            if is_string:
                lengths = pa.Array.from_buffers(pa.int32(), n, [None, column[1]])
                ends = pc.cumulative_sum(lengths.cast(pa.int64()))
                offsets = pa.concat_arrays([_int64s(array.array("q", [0])), ends])
                arrays.append(
                    pa.StringArray.from_buffers(
                        n,
                        offsets.cast(pa.int32()).buffers()[1],
                        column[2],
                        validity,
                    )
                )
            else:
                arrays.append(pa.Array.from_buffers(spec.type, n, [validity, column[1]]))
        return pa.Table.from_arrays(arrays, schema=self.schema)

    def close(self) -> None:
        self.close_writers()


def _write_all(fd: int, views: list[memoryview]) -> int:
    """Write every view at the end of ``fd`` (one ``writev`` where there is one); bytes written."""
    total = sum(v.nbytes for v in views)
    if hasattr(os, "writev"):
        done = os.writev(fd, views)
        if done == total:
            return total
    else:
        done = 0
    # A short write (rare, e.g. a full disk): the rest, piece by piece, raising on failure.
    data = b"".join(views)[done:]
    while data:
        written = os.write(fd, data)
        data = data[written:]
    return total


def _read_all(handle: Any, targets: list[memoryview], offset: int) -> None:
    """Fill ``targets`` with the bytes at ``offset`` (one ``preadv`` where there is one)."""
    total = sum(t.nbytes for t in targets)
    if hasattr(os, "preadv"):
        if os.preadv(handle.fileno(), targets, offset) == total:
            return
    handle.seek(offset)
    for target in targets:
        view = target
        while view.nbytes:
            got = handle.readinto(view)
            if not got:
                raise OSError(f"spill file ended early at {offset}: not the bytes written")
            view = view[got:]


def _first_of_runs(values: Any) -> Any:
    """True where a sorted array's value differs from the one before (the first of each run)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(values)
    if n == 0:
        return pa.nulls(0, pa.bool_())
    return pa.concat_arrays([_trues(1), pc.not_equal(values.slice(1), values.slice(0, n - 1))])


def _scatter(positions: Any, lo: int, hi: int) -> Any:
    """Take-indices placing the rows at sorted unique ``positions`` into ``range(lo, hi)``.

    Row ``i`` of the answer is the index of the row whose position is ``lo + i``, or null.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(positions) == 0:
        return pa.nulls(hi - lo, pa.int64())
    wanted = _range(lo, hi)
    at = pc.search_sorted(positions, wanted)
    clipped = pc.min_element_wise(at.cast(pa.int64()), _int(len(positions) - 1))
    found = pc.equal(positions.take(clipped), wanted)
    return pc.if_else(found, clipped, _null(pa.int64()))


# --------------------------------------------------------------------------------------------
# Assembly, in input order
# --------------------------------------------------------------------------------------------
def _assemble(
    ins: _Inputs,
    buckets: _Buckets,
    destination: str,
    opts: dict[str, Any],
    default_status: str,
    report: _Report,
) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    counts = dict.fromkeys(STATUSES, 0)
    tokens: dict[str, dict[str, int]] = {}
    preview: list[dict[str, Any]] = []
    staging = _Staging(_parent(destination), opts)
    name = posixpath.basename(destination.rstrip("/"))
    result_schema = pa.schema(list(_row_schema())[1:])
    writer: pq.ParquetWriter | None = None
    schema = None
    # Parquet encoding runs in its own thread (pyarrow releases the GIL) while the next buckets
    # are prepared. Small buckets keep the preparation light; they are gathered into row groups
    # of about _ROW_GROUP_BYTES so the file does not get tiny row groups.
    write_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dagster-together-write")
    pending = None
    gathered: list[pa.Table] = []
    gathered_bytes = 0

    def flush() -> None:
        nonlocal pending, gathered, gathered_bytes
        if not gathered:
            return
        group = pa.concat_tables(gathered)
        gathered, gathered_bytes = [], 0
        if pending is not None:
            pending.result()  # raises if the previous write failed
        assert writer is not None  # opened before the first table is gathered
        pending = write_thread.submit(writer.write_table, group, row_group_size=group.num_rows)

    try:
        bounds = buckets.bounds(ins.n)
        for b, ((lo, hi), inputs) in enumerate(zip(bounds, ins.slices(bounds), strict=True)):
            if b and b % _TRIM_EVERY == 0:
                _give_back_memory()
            spilled = buckets.read(b)
            if spilled is not None:
                results = _pick(spilled, lo, hi, inputs, report)
                del spilled
            else:
                results = pa.Table.from_arrays(
                    [pa.nulls(hi - lo, t) for t in result_schema.types], schema=result_schema
                )
            status = pc.coalesce(results.column("status"), _str(default_status))
            results = results.set_column(0, "status", status)
            for item in pc.value_counts(status):
                counts[item["values"].as_py()] += item["counts"].as_py()
            _add_tokens(tokens, results)
            table = pa.Table.from_arrays(
                inputs.columns + results.columns,
                names=inputs.column_names + results.column_names,
            )
            del results, inputs
            if writer is None:
                schema = table.schema
                writer = pq.ParquetWriter(staging.path(name), schema, **_parquet_options(schema))
            if len(preview) < 5:
                preview.extend(_preview_rows(table.slice(0, 5 - len(preview))))
            gathered.append(table)
            gathered_bytes += table.nbytes
            del table
            if gathered_bytes >= _ROW_GROUP_BYTES:
                flush()
        flush()
        if pending is not None:
            pending.result()
            pending = None
        if writer is not None:
            writer.close()
            writer = None
        staging.publish([name])
    finally:
        if pending is not None:
            pending.exception()  # wait: the file must not be closed under the writer
        write_thread.shutdown(wait=True)
        if writer is not None:
            writer.close()
        staging.close()
    return {
        "destination": destination,
        "n_inputs": ins.n,
        "n_rows": sum(counts.values()),
        "counts": counts,
        "unknown_ids": report.unknown,
        "duplicate_ids": report.duplicates,
        "malformed_lines": tuple(report.malformed),
        "n_malformed_lines": report.n_malformed,
        "tokens_by_model": tokens,
        "unknown_id_examples": tuple(report.unknown_examples),
        "duplicate_id_examples": tuple(report.duplicate_examples),
        "columns": tuple((f.name, str(f.type)) for f in schema) if schema else (),
        "preview_rows": tuple(preview),
    }


_TEXT_COLUMNS = {"prompt", "content", "response", "error"}


def _parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """Dictionary encoding and min/max statistics only where they pay off.

    Long, mostly unique texts (prompts, answers, raw lines) gain nothing from either, and trying
    costs time; statuses, models, codes and counts keep both (they make filters fast). Ids keep
    statistics only: they are unique, so a dictionary would fill up and fall back to plain.
    """
    small = [f.name for f in schema if f.name not in _TEXT_COLUMNS]
    return {"use_dictionary": [n for n in small if n != "custom_id"], "write_statistics": small}


def _pick(spilled: pa.Table, lo: int, hi: int, inputs: pa.Table, report: _Report) -> pa.Table:
    """The result row of each input in ``[lo, hi)`` (first occurrence wins), nulls for none.

    Only the small ``idx`` column is sorted; the wide rows are copied once, by one ``take``.
    """
    import pyarrow.compute as pc

    idx = spilled.column("idx").combine_chunks()
    order = pc.sort_indices(idx)  # stable: among equal ids, the first read stays first
    idx = idx.take(order)
    first = _first_of_runs(idx)
    if not pc.all(first).as_py():
        later = pc.invert(first)
        dup_positions = pc.subtract(idx.filter(later), _int(lo))
        report.duplicate_ids(
            len(dup_positions),
            inputs.column("custom_id").take(dup_positions.slice(0, _MAX_RECORDED)).to_pylist(),
        )
        order, idx = order.filter(first), idx.filter(first)
    return spilled.drop_columns(["idx"]).take(order.take(_scatter(idx, lo, hi)))


def _add_tokens(tokens: dict[str, dict[str, int]], rows: pa.Table) -> None:
    """Add the token counts of ``rows`` to ``tokens``, by model (``unknown`` without one)."""
    import pyarrow.compute as pc

    names = ("prompt_tokens", "completion_tokens", "total_tokens")
    rows = rows.select([*names, "model"])  # never copy the wide columns
    counted = pc.is_valid(pc.coalesce(*(rows.column(n) for n in names)))
    if not pc.any(counted).as_py():
        return
    rows = rows.filter(counted)
    models = pc.coalesce(rows.column("model"), _str("unknown"))
    for model in pc.unique(models).to_pylist():
        subset = rows.filter(pc.equal(models, _str(model))) if model else rows
        totals = tokens.setdefault(model, dict.fromkeys(names, 0))
        for n in names:
            totals[n] += pc.sum(subset.column(n)).as_py() or 0


def _preview_rows(table: pa.Table) -> list[dict[str, Any]]:
    wanted = ("custom_id", "status", "prompt", "content", "error")
    rows = table.select([c for c in wanted if c in table.column_names]).to_pylist()
    for row in rows:
        for key in ("prompt", "content", "error"):
            if isinstance(row.get(key), str) and len(row[key]) > 80:
                row[key] = row[key][:77] + "..."
    return rows
