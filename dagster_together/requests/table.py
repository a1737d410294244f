"""Reading a user's table: requests built from its rows, and its own columns keyed by custom_id.

A table is an Arrow-like object (pyarrow, pandas, anything with the Arrow PyCapsule stream
protocol) or the path/URL of a Parquet file/directory or a JSONL file, told apart by suffix and
then by the first bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from dagster_together.answers import key_of_text
from dagster_together.client.errors import InvalidRequestFileError
from dagster_together.memory import give_back_memory
from dagster_together.requests.lines import LineFormat
from dagster_together.requests.rules import _DECODER, RowNaming, json_type
from dagster_together.requests.template import AUDIO, AudioTemplate, RequestTemplate
from dagster_together.storage import filesystem, open_pending

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

# --------------------------------------------------------------------------------------------
# Reading a user's table
# --------------------------------------------------------------------------------------------
_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz", ".json.gz")


class _Source:
    """A user's table: Arrow-like (record batches) or a JSONL file (rows as dicts)."""

    def __init__(self, source: Any, storage_options: Mapping[str, Any] | None) -> None:
        self.name = "table"
        self.unit = "row"  # what a position counts: rows (1-based), or a JSONL file's lines
        self.arrow: Any = None  # a pyarrow Table, or a Parquet location
        self.jsonl: str | None = None
        self.storage_options = storage_options
        if isinstance(source, (str, os.PathLike)):
            location = str(os.fspath(source))
            self.name = location
            fs, path = filesystem(location, storage_options)
            if not fs.exists(path):
                raise InvalidRequestFileError(f"{location}: does not exist; check the path.")
            kind = sniff_format(fs, path)
            if kind == "jsonl":
                self.jsonl = location
                self.unit = "line"
            else:
                self.arrow = (fs, path)
            return
        self.arrow = to_arrow_table(source)

    def column_names(self) -> list[str] | None:
        """Column names, or None for JSONL (known only row by row)."""
        if self.jsonl is not None:
            return None
        if isinstance(self.arrow, tuple):
            fs, path = self.arrow
            return list(_parquet_schema(fs, path).names)
        return list(self.arrow.column_names)

    def rows(self, columns: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
        """(position, row) pairs holding only ``columns``: the 1-based row, or the JSONL line."""
        if self.jsonl is not None:
            yield from self._jsonl_rows()
            return

        if isinstance(self.arrow, tuple):
            fs, path = self.arrow
            batches = _parquet_batches(fs, path, columns)
        else:
            batches = iter(self.arrow.select(columns).to_batches(max_chunksize=10_000))
        index = 1
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
                yield index, row
                index += 1

    def unique_ids(self, column: str) -> bool:
        """Whether ``column`` certainly holds distinct, non-null strings or integers (False for
        JSONL, other types, nulls or repeats: the rows then tell, one by one)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if self.jsonl is not None:
            return False
        if isinstance(self.arrow, tuple):
            fs, path = self.arrow
            # A batch at a time, on this thread: a threaded read_table holds far more.
            ids = pa.chunked_array(
                [b.column(0) for b in _parquet_batches(fs, path, [column])],
                _parquet_schema(fs, path).field(column).type,
            )
        else:
            ids = self.arrow.column(column)
        typ = ids.type
        if not (
            pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_integer(typ)
        ):
            return False
        if ids.null_count or len(ids) < 2:
            return ids.null_count == 0
        # Sorted neighbours, not count_distinct: its hash table of a million strings takes
        # about twice the memory.
        ids = ids.combine_chunks()
        ids = ids.take(pc.sort_indices(ids))
        unique = not pc.any(pc.equal(ids.slice(1), ids.slice(0, len(ids) - 1))).as_py()
        del ids
        give_back_memory()  # the sorted copies are the size of the id column: not kept for the rows
        return unique

    def _jsonl_rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
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
                        f"{where}: is a JSON {json_type(row)}, not an object (a row)."
                    )
                yield line_no, row


def _parquet_batches(fs: Any, path: str, columns: list[str]) -> Iterator[Any]:
    """Record batches of a Parquet file, or of every Parquet file under a directory."""
    import pyarrow.parquet as pq

    if fs.isfile(path):
        files = [path]
    else:
        files = sorted(p for p in fs.find(path) if p.endswith(_PARQUET_SUFFIXES))
    for file in files:
        with fs.open(file, "rb") as handle:
            yield from pq.ParquetFile(handle).iter_batches(
                batch_size=10_000, columns=columns, use_threads=False
            )


def _parquet_schema(fs: Any, path: str) -> Any:
    """The Arrow schema of a Parquet file, or of the first Parquet file under a directory (read
    with ``pyarrow.parquet``: importing ``pyarrow.dataset`` alone adds about 45 MB to a process)."""
    import pyarrow.parquet as pq

    if not fs.isfile(path):
        files = sorted(p for p in fs.find(path) if p.endswith(_PARQUET_SUFFIXES))
        if not files:
            raise InvalidRequestFileError(f"{path}: holds no Parquet file.")
        path = files[0]
    with fs.open(path, "rb") as handle:
        return pq.read_schema(handle)


def sniff_format(fs: Any, path: str) -> str:
    """ "parquet" or "jsonl", from the suffix, else from the first bytes."""
    lower = path.lower()
    if lower.endswith(_PARQUET_SUFFIXES) or fs.isdir(path):
        return "parquet"
    if lower.endswith(_JSONL_SUFFIXES):
        return "jsonl"
    with fs.open(path, "rb") as handle:
        head = handle.read(4)
    return "parquet" if head == b"PAR1" else "jsonl"


def to_arrow_table(source: Any) -> Any:
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
class TableRequests(Iterator[dict[str, Any]]):
    """The requests :func:`build_requests` makes from a table, lazily, knowing where each came from.

    Attributes:
        position: the row (1-based; the line, for a JSONL file) of the request last returned.
        naming: how messages name the table, its rows and the id column (set once reading starts).
        line: the JSON text of the request last returned when the template wrote it directly
            (see :mod:`~dagster_together.requests.lines`), else None (its dict is encoded).

    :func:`~dagster_together.requests.chunks.write_request_chunks` reads all three: its errors
    name the user's row and id column rather than a request number and ``custom_id``, and a
    ``line`` is written as it is. The submit asks :meth:`content_key` for each request.
    """

    def __init__(
        self,
        naming: RowNaming,
        rows: Iterator[_Built],
        template: RequestTemplate | AudioTemplate | None = None,
    ) -> None:
        self.naming = naming
        self.position = 0
        self.line: str | None = None
        self._rows = rows
        self._values: Mapping[str, Any] | None = None  # the row the template read, last request
        self._template = template if isinstance(template, RequestTemplate) else None
        self._key_formats: dict[str, LineFormat | None] = {}

    def __iter__(self) -> TableRequests:
        return self

    def __next__(self) -> dict[str, Any]:
        self.position, request, self.line, self._values = next(self._rows)
        return request

    def content_key(self, endpoint: str) -> str | None:
        """The content key (:func:`~dagster_together.answers.request_key`) of the request last
        returned, made from the template's text around the row's values; None when the
        template cannot make it (then ``request_key`` of the request's body gives it)."""
        if self._values is None or self._template is None:
            return None
        if endpoint not in self._key_formats:
            self._key_formats[endpoint] = LineFormat.key_of(self._template, endpoint)
        key_format = self._key_formats[endpoint]
        if key_format is None:
            return None
        return key_of_text(key_format.line("", self._values))


def build_requests(
    source: Any,
    *,
    template: RequestTemplate | AudioTemplate | None = None,
    id_column: str | None = None,
    endpoint: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    unique_ids: bool | None = None,
) -> TableRequests:
    """Yield batch requests ``{"custom_id": ..., "body": {...}}`` from a user's table, lazily.

    Two shapes are understood:

    * The table already has ``custom_id`` and ``body`` columns (``body`` a struct/dict or a JSON
      string); other columns are ignored. A non-string ``custom_id`` (e.g. an int) becomes its
      ``str``. Keys that Arrow filled with null in a struct ``body`` are dropped (store ``body`` as
      a JSON string to keep explicit nulls).
    * ``template`` (and ``id_column``) build them: ``custom_id = str(row[id_column])``, and the
      body from the template and the row: a :class:`RequestTemplate` (its ``prompt_column``, or
      the ``{column}`` placeholders of its ``messages``, and its ``image_column``) or an
      :class:`AudioTemplate` (its ``audio_column``; the line gets ``"method": "FILE"``). Without
      ``id_column`` an existing ``custom_id`` column is used. Every column the template uses is
      checked against the table's columns before the first row, and each value for null.

    Args:
        source: a pyarrow Table, a pandas DataFrame (or anything speaking the Arrow PyCapsule
            stream protocol), or the path/URL of a Parquet file/directory or a JSONL file.
        template: how to build bodies; None when the table holds ``custom_id`` and ``body``.
        id_column: the key column giving ``custom_id`` (template mode).
        endpoint: overrides ``template.endpoint`` (template mode). For a table of requests,
            an audio endpoint gives the rows without a ``method`` ``"method": "FILE"`` (a
            ``method`` column or key is kept as it is).
        storage_options: passed to fsspec for URLs (the table's, and images inlined with
            ``inline_images``).
        unique_ids: what an earlier pass over the same table found (its
            ``naming.unique_ids``): True skips sorting the ids again to know they are distinct.
            None (the default) checks.

    Raises:
        InvalidRequestFileError: a column the template uses is missing; a row without id, with a
            null value in a column the template uses, an image that cannot be inlined, an audio
            location that is not an http(s) URL, or with a body that is not valid JSON,
            naming the row (1-based; the line of a JSONL file) and the column. The full batch
            rules (unique ids, lengths, models) are checked by :func:`write_request_chunks`,
            whose messages then name the same rows and the id column.
    """
    if template is not None and endpoint is not None and endpoint != template.endpoint:
        template = replace(template, endpoint=endpoint)
    naming = RowNaming()
    rows = _build(source, template, id_column, endpoint, storage_options, naming, unique_ids)
    return TableRequests(naming, rows, template)


# A built request: its row (1-based), the request, its line when the template wrote it, and the
# values the template read (None for a table of requests or an audio template).
_Built = tuple[int, dict[str, Any], str | None, Mapping[str, Any] | None]


def _build(
    source: Any,
    template: RequestTemplate | AudioTemplate | None,
    id_column: str | None,
    endpoint: str | None,
    storage_options: Mapping[str, Any] | None,
    naming: RowNaming,
    unique_ids: bool | None = None,
) -> Iterator[_Built]:
    table = _Source(source, storage_options)
    naming.source, naming.unit = table.name, table.unit
    names = table.column_names()
    if template is None:
        if names is not None and not {"custom_id", "body"} <= set(names):
            raise InvalidRequestFileError(
                f"{table.name}: has no 'custom_id' and 'body' columns (columns: {names}); pass "
                "template=RequestTemplate(model=..., prompt_column=...) and id_column=... to "
                "build the requests from your own columns."
            )
        method = "FILE" if endpoint in AUDIO else None
        naming.unique_ids = unique_ids or table.unique_ids("custom_id")
        yield from _prebuilt(table, naming, names, method)
        return
    if id_column is None:
        if names is not None and "custom_id" not in names:
            raise InvalidRequestFileError(
                f"{table.name}: pass id_column= (the column that identifies a row; it becomes "
                "custom_id) or add a 'custom_id' column."
            )
        id_column = "custom_id"
    naming.column = id_column
    used = template.placeholders()
    if names is not None:
        if id_column not in names:
            raise InvalidRequestFileError(
                f"{table.name}: has no column {id_column!r} (columns: {names}); check id_column."
            )
        for column, where in used.items():
            if column not in names:
                raise InvalidRequestFileError(
                    f"{table.name}: has no column {column!r}, which the template uses "
                    f"({where}); columns: {names}. Check the template's column names."
                )
    naming.unique_ids = unique_ids or table.unique_ids(id_column)
    wanted = list(dict.fromkeys([id_column, *used]))
    if isinstance(template, AudioTemplate):
        make = _audio_body(template, naming, id_column)
    else:
        make = _chat_body(template, naming, id_column, used, storage_options)
    for pos, row in table.rows(wanted):
        custom_id = _id_text(row.get(id_column))
        if custom_id is None:
            raise InvalidRequestFileError(
                f"{naming.where(pos)}: the id column {id_column!r} is null; every row needs an id "
                "(it becomes custom_id, on which the results are joined)."
            )
        for column, where in used.items():
            if row.get(column) is None:
                what = "absent" if column not in row else "null"
                raise InvalidRequestFileError(
                    f"{naming.where(pos)}: {_describe(column, where)} is {what} "
                    f"({id_column} {custom_id!r}); fill or drop such rows first."
                )
        request, line = make(pos, custom_id, row)
        yield pos, request, line, row


def _describe(column: str, where: str) -> str:
    """``the prompt column 'text'``, or ``the column 'product' (used as {product} in ...)``."""
    if where.startswith("the ") and where.endswith(" column"):
        return f"{where} {column!r}"
    return f"the column {column!r} (used as {where})"


def _chat_body(
    template: RequestTemplate,
    naming: RowNaming,
    id_column: str,
    used: Mapping[str, str],
    storage_options: Mapping[str, Any] | None,
) -> Any:
    from dagster_together.requests.images import ImageInliner

    prompt_column = template.prompt_column
    image_column = template.image_column
    inliner = (
        ImageInliner(storage_options, template.max_image_bytes) if template.inline_images else None
    )

    lines = LineFormat.of(template)

    def make(pos: int, custom_id: str, row: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        prompt = None
        if prompt_column is not None:
            prompt = row[prompt_column]
            if not isinstance(prompt, str):
                raise InvalidRequestFileError(
                    f"{naming.where(pos)}: the prompt column {prompt_column!r} is a "
                    f"{type(prompt).__name__}, not text ({id_column} {custom_id!r}); convert "
                    "it first."
                )
        images: list[str] = []
        if image_column is not None:
            value = row[image_column]
            locations = value if isinstance(value, list) else [value]
            if not locations or not all(isinstance(v, str) and v for v in locations):
                raise InvalidRequestFileError(
                    f"{naming.where(pos)}: the image column {image_column!r} holds "
                    f"{type(value).__name__} {value!r:.60}, not an image URL or a list of them "
                    f"({id_column} {custom_id!r})."
                )
            if inliner is not None:
                where = f"{naming.where(pos)} ({id_column} {custom_id!r})"
                images = [inliner.url(v, where) for v in locations]
            else:
                images = list(locations)
        request = {
            "custom_id": custom_id,
            "body": template.build_body(prompt, values=row, images=images),
        }
        return request, lines.line(custom_id, row) if lines is not None else None

    return make


def _audio_body(template: AudioTemplate, naming: RowNaming, id_column: str) -> Any:
    column = template.audio_column

    def make(pos: int, custom_id: str, row: dict[str, Any]) -> tuple[dict[str, Any], None]:
        url = row[column]
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InvalidRequestFileError(
                f"{naming.where(pos)}: the audio column {column!r} holds {url!r:.80} "
                f"({id_column} {custom_id!r}); audio batches take public http(s) URLs that the "
                "service fetches (e.g. presigned URLs), not local paths or s3:// locations."
            )
        language = None
        if template.language_column is not None:
            language = _id_text(row[template.language_column])
        request = {
            "custom_id": custom_id,
            "method": "FILE",
            "body": template.build_body(url, language),
        }
        return request, None

    return make


def _prebuilt(
    table: _Source, naming: RowNaming, names: list[str] | None, method: str | None
) -> Iterator[_Built]:
    """Rows that are requests already; a ``method`` column (or key) is kept, and ``method``
    is the default for rows without one (``FILE`` for audio endpoints)."""
    wanted = ["custom_id", "body"] + (["method"] if names is None or "method" in names else [])
    for pos, row in table.rows(wanted):
        if "custom_id" not in row or "body" not in row:
            raise InvalidRequestFileError(
                f"{naming.where(pos)}: has no 'custom_id' and 'body'; every row needs both (or "
                "use a RequestTemplate)."
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
                    f"{naming.where(pos)}: custom_id {custom_id!r} has a body string that is not "
                    f"valid JSON ({exc}); store the body as a JSON object string or a struct."
                ) from None
        request = {"custom_id": custom_id, "body": body}
        row_method = row.get("method")
        if row_method is not None or method is not None:
            request = {"custom_id": custom_id, "method": row_method or method, "body": body}
        yield pos, request, None, None


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

    names, parts = input_columns_batches(
        source, id_column=id_column, columns=columns, storage_options=storage_options
    )
    tables = list(parts)
    if not tables:
        return pa.table({name: pa.array([], pa.string()) for name in names})
    return pa.concat_tables(tables)


def input_columns_batches(
    source: Any,
    *,
    id_column: str | None = None,
    columns: Iterable[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[list[str], Iterator[pa.Table]]:
    """:func:`input_columns_table` a slice at a time, so that a million rows are never in memory
    at once: a Parquet source is read a batch at a time (a JSONL one whole).

    Returns:
        The column names (``custom_id`` first), checked before anything is read, and the slices
        in order.
    """
    import pyarrow as pa

    table_source = _Source(source, storage_options)
    table: Any = None
    if table_source.jsonl is not None:
        table = pa.Table.from_pylist([row for _, row in table_source.rows([])])
        names = table.column_names
    else:
        names = table_source.column_names() or []
        if not isinstance(table_source.arrow, tuple):
            table = table_source.arrow
    key = id_column or "custom_id"
    if key not in names:
        raise InvalidRequestFileError(
            f"{table_source.name}: has no column {key!r} (columns: {names})."
        )
    keep = list(columns) if columns is not None else [c for c in names if c != "body"]
    missing = [c for c in keep if c not in names]
    if missing:
        raise InvalidRequestFileError(f"{table_source.name}: has no column {missing[0]!r}.")
    keep = [c for c in keep if c != "custom_id"]
    read = list(dict.fromkeys([key, *keep]))
    if table is not None:
        table = table.select(read)
        # An empty table stays one (empty) slice, so that its columns keep their types.
        parts: Iterator[Any] = iter(
            table.to_batches(max_chunksize=_COLUMN_ROWS) if table.num_rows else [table]
        )
    else:
        fs, path = table_source.arrow
        parts = _parquet_batches(fs, path, read)
    return ["custom_id", *keep], _keyed(parts, key, keep, table_source.name)


_COLUMN_ROWS = 65_536  # rows per slice of input_columns_batches from an in-memory table


def _keyed(parts: Iterator[Any], key: str, keep: list[str], name: str) -> Iterator[pa.Table]:
    import pyarrow as pa

    for part in parts:
        column = part.column(key)
        if pa.types.is_string(column.type) or pa.types.is_integer(column.type):
            # The same text as _id_text, without a Python object per row.
            ids = column.cast(pa.string())
        else:
            ids = pa.array([_id_text(v) for v in column.to_pylist()], pa.string())
        if ids.null_count:
            raise InvalidRequestFileError(
                f"{name}: the id column {key!r} has {ids.null_count} null value(s); "
                "every row needs an id."
            )
        yield pa.Table.from_arrays(
            [ids, *(part.column(c) for c in keep)], names=["custom_id", *keep]
        )


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
