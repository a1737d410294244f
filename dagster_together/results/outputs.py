"""Output and error lines made into result rows: ``custom_id`` and :data:`RESULT_COLUMNS`.

Each block is parsed by pyarrow with an explicit schema of the fields extracted, and extracted
with vectorised compute (:func:`_extract`); the lines pyarrow refuses are read with :mod:`json`
(:func:`_extract_one`, its twin). Lines that are not results, and ids that are unknown or
already answered (found later, by the buckets and the assembly), go to the :class:`_Report`,
which logs them, or raises :class:`MalformedResultError` with ``strict=True``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from dagster_together.arrow_values import strings
from dagster_together.client.errors import TogetherError
from dagster_together.requests.rules import json_type
from dagster_together.results import blocks
from dagster_together.results.arrow import (
    _bool,
    _first_element,
    _int,
    _null,
    _range,
    _scatter,
    _str,
)
from dagster_together.results.blocks import (
    _Block,
    _json_error,
    _line_blocks,
    _pa_read,
    _parallel,
    _Prefetcher,
    _text,
)
from dagster_together.storage import filesystem

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

# Every module of the package logs as ``dagster_together.results``: the name users configure.
logger = logging.getLogger("dagster_together.results")


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
    "tool_calls",
    "reasoning",
    "language",
    "duration",
    "response",
)
"""Columns added after the input columns (an input column of the same name becomes ``input_<name>``).

``tool_calls`` is the first choice's ``message.tool_calls`` as JSON text; ``reasoning`` its
``message.reasoning`` (or ``reasoning_content``); ``language`` and ``duration`` come from audio
answers (``verbose_json``), whose ``text`` is the ``content``. They are always present (null when
an answer has none), so that every batch's Parquet file has the same columns."""

_READ_AHEAD = 2  # output blocks parsed ahead (while the inputs are read), beside those in work
_MAX_RECORDED = 100  # malformed lines / id examples kept in the summary
_MAX_LOGGED = 20  # malformed lines logged one by one


class MalformedResultError(TogetherError, ValueError):
    """An output or error file holds a line that is not a result (raised with ``strict=True``)."""


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


def _result_schema() -> pa.Schema:
    """What pyarrow extracts from an output or error line; other fields are ignored."""
    import pyarrow as pa

    error = pa.struct([("message", pa.string()), ("code", pa.string()), ("type", pa.string())])
    function = pa.struct([("name", pa.string()), ("arguments", pa.string())])
    call = pa.struct([("id", pa.string()), ("type", pa.string()), ("function", function)])
    message = pa.struct(
        [
            ("content", pa.string()),
            ("tool_calls", pa.list_(call)),
            ("reasoning", pa.string()),
            ("reasoning_content", pa.string()),
        ]
    )
    choice = pa.struct(
        [
            ("message", message),
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
            ("text", pa.string()),
            ("language", pa.string()),
            ("duration", pa.float64()),
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
            ("tool_calls", pa.string()),
            ("reasoning", pa.string()),
            ("language", pa.string()),
            ("duration", pa.float64()),
            ("response", pa.string()),
        ]
    )


RAW_RESPONSES = ("failed", "all", "none")
"""What the ``response`` column keeps: the raw line of the rows that did not succeed (the
default), of every row, or of none. A succeeded row's line repeats its extracted columns and is
most of the bytes the join moves and writes."""


def _read_results(
    locations: list[str], opts: dict[str, Any], report: _Report, raw: str = "failed"
) -> _Prefetcher:
    """Extracted rows of output and error files, in order, from background threads.

    A reader thread starts at once, reads blocks and hands them to the parse threads (see
    :func:`_parallel`), which parse and extract them (none of it needs the inputs); it keeps up
    to ``_READ_AHEAD`` extracted blocks ahead, so the work starts while the inputs are still
    being read. The caller's thread then looks the ids up and spills. Each item is a list of
    tables. ``raw`` is one of :data:`RAW_RESPONSES`.
    """
    schema = _result_schema()

    def located_blocks() -> Iterator[tuple[str, _Block]]:
        for location in locations:
            fs, path = filesystem(location, opts)
            if not fs.exists(path):
                raise FileNotFoundError(
                    f"{location}: does not exist; check the outputs/errors location."
                )
            for b in _line_blocks(fs, path):
                yield location, b

    def extract(item: tuple[str, _Block]) -> tuple[list[pa.Table], _BadLines]:
        location, b = item
        bad = _BadLines(report.strict)
        table = _pa_read(b, schema) if b.pyarrow_safe() else None
        return [t for t in _result_block(b, location, bad, table, raw) if t.num_rows], bad

    def blocks() -> Iterator[list[pa.Table]]:
        for tables, bad in _parallel(extract, located_blocks()):
            for args in bad:
                report.bad_line(*args)
            yield tables

    return _Prefetcher(blocks(), depth=_READ_AHEAD)


def _result_block(
    block: _Block,
    location: str,
    report: _Report | _BadLines,
    table: pa.Table | None = None,
    raw: str = "failed",
) -> list[pa.Table]:
    """Result rows of a block: ``table`` is pyarrow's parse of it (None: refused or not tried);
    ``raw`` says which raw lines are kept (:data:`RAW_RESPONSES`). A row without ``custom_id``
    (a ``{}`` line, or a bare ``null`` pyarrow read as one) is worded by the slow path."""
    if table is not None and table.column("custom_id").null_count:
        table = None
    if table is None:
        # Halve until the lines pyarrow refuses are isolated in small pieces read with json.
        halves = block.split() if block.n > blocks._SLOW_LINES else None
        if halves is None:
            return [_result_block_slow(block, location, report, raw)]
        return [
            t
            for half in halves
            for t in _result_block(
                half,
                location,
                report,
                _pa_read(half, _result_schema()) if half.pyarrow_safe() else None,
                raw,
            )
        ]
    return [_extract(table, block, raw)]


def _extract(table: pa.Table, block: _Block, raw: str = "failed") -> pa.Table:
    """The result columns of a parsed block, every row with a ``custom_id`` (vectorised twin of
    :func:`_extract_one`)."""
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
    message = pc.struct_field(first, "message")
    content = pc.coalesce(
        pc.struct_field(message, "content"),
        pc.struct_field(first, "text"),
        pc.struct_field(body, "text"),
    )
    reasoning = pc.coalesce(
        pc.struct_field(message, "reasoning"), pc.struct_field(message, "reasoning_content")
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
            _tool_calls_text(pc.struct_field(message, "tool_calls")),
            reasoning,
            pc.struct_field(body, "language"),
            pc.struct_field(body, "duration"),
            _raw_lines(block, failed, raw),
        ],
        schema=_row_schema(),
    )
    return rows


_NO_RESPONSE = "no response in the output line"


def _raw_lines(block: _Block, failed: Any, raw: str) -> Any:
    """The ``response`` column of a block: its raw lines, only the failed rows' by default
    (the lines are only cut out of the block when one is kept)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if raw == "all":
        return block.raw_lines()
    n = block.n
    if raw == "none" or not pc.any(failed).as_py():
        return pa.nulls(n, pa.string())
    at = pc.indices_nonzero(failed).cast(pa.int64())
    kept = block.raw_lines().take(at)
    return kept.take(_scatter(at, 0, n))


def _tool_calls_text(calls: Any) -> Any:
    """Each row's tool calls as JSON text (null without any): only the rows with calls go
    through Python, so answers without any (null, or the ``[]`` many servers send) stay in
    Arrow."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if calls.null_count == len(calls):
        return pa.nulls(len(calls), pa.string())
    texts = pc.if_else(pc.is_valid(calls), _str("[]"), _null(pa.string()))
    some = pc.indices_nonzero(pc.fill_null(pc.greater(pc.list_value_length(calls), 0), False))
    if len(some) == 0:
        return texts
    dumped = strings([json.dumps(c, ensure_ascii=False) for c in calls.take(some).to_pylist()])
    # Row i: its dumped text where it has calls, else its "[]" or null.
    n = len(calls)
    at = _scatter(some.cast(pa.int64()), 0, n)
    pick = pc.if_else(pc.is_valid(at), pc.add(at, _int(n)), _range(0, n))
    return pa.concat_arrays([texts, dumped]).take(pick)


def _result_block_slow(
    block: _Block, location: str, report: _Report | _BadLines, raw: str = "failed"
) -> pa.Table:
    """Read a few lines with :mod:`json`; record the lines that are not results."""
    import pyarrow as pa

    rows = []
    last_line = block.first_line + block.n - 1
    for line_no, line in block.lines():
        if not line.strip():
            continue  # nothing on the line, nothing lost
        try:
            text = line.decode("utf-8")
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
            report.bad_line(location, line_no, f"is a JSON {json_type(obj)}, not an object")
            continue
        row = _extract_one(obj)
        if row is None:
            report.bad_line(location, line_no, "has no custom_id")
            continue
        keep = raw == "all" or (raw == "failed" and row[1] == "failed")
        rows.append((*row, text.rstrip("\r\n") if keep else None))
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
    message = message if isinstance(message, dict) else {}
    content = _text(message.get("content"))
    if content is None:
        content = _text(first.get("text"))
    if content is None:
        content = _text(body.get("text"))
    calls = message.get("tool_calls")
    reasoning = _coalesce(_text(message.get("reasoning")), _text(message.get("reasoning_content")))
    language = body.get("language")
    duration = body.get("duration")
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
        None if calls is None else json.dumps(calls, ensure_ascii=False),
        reasoning,
        language if language is None or isinstance(language, str) else str(language),
        float(duration)
        if isinstance(duration, (int, float)) and not isinstance(duration, bool)
        else None,
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
