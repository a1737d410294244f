"""Files read as blocks of whole lines, parsed by pyarrow on worker threads.

The inputs and the outputs are both read this way: :func:`_line_blocks` cuts a file into blocks
of about ``_READ_SIZE`` bytes, :func:`_parallel` has ``_PARSE_WORKERS`` of them parsed at once
(:func:`_pa_read`), and a :class:`_Prefetcher` runs it all ahead on a background thread. A block
pyarrow refuses is halved (by the inputs' and the outputs' readers) until pieces of
``_SLOW_LINES`` lines or fewer are read with :mod:`json` (:func:`_text` and :func:`_json_error`
serve that slow path). Every
``_TRIM_EVERY`` blocks or buckets, freed memory is handed back to the OS
(:func:`dagster_together.memory.give_back_memory`).
"""

from __future__ import annotations

import array
import collections
import json
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from dagster_together.requests.rules import is_utf8

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa


_READ_SIZE = 2 * 1024 * 1024  # bytes per block of lines
_PARSE_WORKERS = 2  # blocks parsed at once, each by one thread
_TRIM_EVERY = 64  # blocks or buckets between two hand-backs of freed memory to the OS (each
# hand-back is paid again in page faults when the memory is used next: rarely is enough)
_SLOW_LINES = 32  # below this many lines a failing block is read line by line


Location = str | os.PathLike
Locations = Location | Sequence[Location] | None


def _as_list(value: Locations) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [str(os.fspath(value))]
    return [str(os.fspath(v)) for v in value]


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
    added). The lines are counted and checked with ``bytes.count`` (C); Arrow cuts the block
    at its newlines (``pieces``: the lines as binary, without their newline, a copy) only when
    the raw lines are asked for; the line offsets (a Python loop) only for the slow path."""

    __slots__ = ("data", "n", "first_line", "unterminated", "_pieces", "_offsets")

    def __init__(self, data: bytes | bytearray, first_line: int, unterminated: bool) -> None:
        self.data = data
        self.n = data.count(b"\n")
        self.first_line = first_line
        self.unterminated = unterminated
        self._pieces: pa.Array | None = None
        self._offsets: array.array | None = None

    @property
    def pieces(self) -> pa.Array:
        """The lines as binary, without their newline."""
        if self._pieces is None:
            import pyarrow as pa
            import pyarrow.compute as pc

            data = self.data
            whole = pa.Array.from_buffers(
                pa.large_binary(),
                1,
                [None, pa.py_buffer(array.array("q", [0, len(data)])), pa.py_buffer(data)],
            )
            pieces = pc.split_pattern(whole, b"\n").values
            self._pieces = pieces.slice(0, len(pieces) - 1)  # the last follows the last newline
        return self._pieces

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

    def pyarrow_safe(self) -> bool:
        """True if the block may be given to pyarrow's reader: it starts with ``{`` (the reader
        crashes on a block whose first line is ``null``) and it is UTF-8 (the reader does not
        check the fields it ignores).

        The reader's other leniencies are caught on its answer: a blank line it skips leaves
        fewer rows than lines (:func:`_pa_read` refuses the block), and a bare ``null`` line
        becomes a row without ``custom_id`` (the block is then read as refused).
        """
        data = self.data
        if not self.n or data[:1] != b"{":
            return False
        return data.isascii() or is_utf8(data)

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
