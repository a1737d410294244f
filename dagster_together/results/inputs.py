"""The inputs: their ids, sorted for lookups, and their columns in input order.

Request JSONL files are read as blocks (see ``blocks``) into the :data:`REQUEST_COLUMNS`, which
are spilled to a local Arrow IPC file; a table of the user's columns (Parquet, pyarrow, pandas)
is held as it is. Only the ids stay in memory, sorted, for ``pyarrow.compute.search_sorted``;
``input_columns`` are aligned to them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from dagster_together.client.errors import InvalidRequestFileError
from dagster_together.memory import give_back_memory
from dagster_together.results import blocks
from dagster_together.results.arrow import (
    _bool,
    _first_of_runs,
    _int,
    _last_element,
    _null,
    _scatter,
    _str,
    _trues,
)
from dagster_together.results.blocks import (
    _as_list,
    _Block,
    _json_error,
    _line_blocks,
    _pa_read,
    _parallel,
    _prefetch,
    _text,
)
from dagster_together.results.outputs import RESULT_COLUMNS
from dagster_together.storage import filesystem, read_parquet

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa


REQUEST_COLUMNS = ("request_model", "prompt")
"""Input columns made from a request JSONL file: the body's model and the last user message (its
text parts, for a message with images), the audio's URL (``file``) of an audio request, or the
completions prompt. The raw request lines are not copied: they stay in the input file (the
results asset keeps it beside the results), one line per ``custom_id``."""


def request_prompt(body: Any) -> str | None:
    """The ``prompt`` input column of one request body, as the join derives it from a request
    JSONL: the last user message's text, else the audio's ``file``, else the completions
    ``prompt`` (None when there is none)."""
    body = body if isinstance(body, dict) else {}
    prompt = _last_user_text(body.get("messages"))
    if prompt is None:
        audio = body.get("file")
        prompt = audio if isinstance(audio, str) else _text(body.get("prompt"))
    return prompt


def request_rows_table(requests: pa.Table, columns: pa.Table | None = None) -> pa.Table:
    """The inputs table the join would make from a request JSONL plus ``input_columns``.

    ``requests`` holds ``custom_id`` and :data:`REQUEST_COLUMNS` in request order; ``columns``
    (``custom_id`` plus the user's columns) lines up with it row for row. The user's columns
    follow, renamed as the join renames them (``input_prompt``...), so that giving the result as
    ``inputs=`` yields the same results table without parsing any request JSON.
    """
    import pyarrow as pa

    names = ["custom_id", *REQUEST_COLUMNS]
    arrays = [requests.column(name) for name in names]
    if columns is not None:
        if columns.num_rows != requests.num_rows or not columns.column("custom_id").equals(
            requests.column("custom_id")
        ):
            raise ValueError("request_rows_table: the columns do not line up with the requests.")
        for name in columns.column_names:
            if name != "custom_id":
                arrays.append(columns.column(name))
                names.append(_free_name(name, names))
    return pa.Table.from_arrays(arrays, names=names)


def _last_user_text(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text(message.get("content"))
    return None


class _Inputs:
    """The inputs: ids sorted for lookups, and their columns in input order (spilled or in memory)."""

    def __init__(self) -> None:
        self.n = 0
        self.sorted_ids: Any = None  # pa.Array of string, ascending
        self.order: Any = None  # input position of each sorted id (uint32); None: in order
        self.table: Any = None  # an in-memory table of input columns, or
        self.spill: str | None = None  # an IPC stream file of them, or
        self.parquet: tuple[Any, str] | None = None  # (filesystem, path) of a Parquet file
        self.extra: Any = None  # input_columns aligned to the inputs (in memory)
        self.request_columns = False

    def index_ids(self, chunks: list[Any], where: str) -> None:
        """Sort the ids (given as a list of arrays, emptied here) for lookups.

        Refuses nulls and duplicates. The copies are made one at a time and the previous one
        dropped, since this is the one structure that grows with the number of inputs; ids
        that are already ascending need no sorted copy at all.
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
        if self.n > 1 and pc.all(pc.less(ids.slice(0, self.n - 1), ids.slice(1))).as_py():
            # Already ascending (ids numbered in row order with zero padding, timestamps...):
            # the ids are their own index, with no permutation and no sorted copy beside them.
            self.sorted_ids, self.order = ids, None
            return
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
        where = clipped if self.order is None else self.order.take(clipped).cast(pa.int64())
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

        opened: list[_ParquetColumns] = []
        if self.table is not None:
            parts: Iterator[pa.Table] = (self.table.slice(lo, hi - lo) for lo, hi in bounds)
        elif self.parquet is not None:
            columns = _ParquetColumns(*self.parquet)
            parts = _stream_slices(columns, bounds)
            opened.append(columns)
        else:
            parts = _stream_slices(ipc.open_stream(pa.OSFile(self.spill)), bounds)
        try:
            for (lo, hi), part in zip(bounds, parts, strict=True):
                if self.extra is not None:
                    extra = self.extra.slice(lo, hi - lo)
                    for name in extra.column_names:
                        part = part.append_column(_free_name(name, part.column_names), extra[name])
                yield part
        finally:
            for reader in opened:
                reader.close()


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
    from dagster_together.requests.table import to_arrow_table

    if isinstance(source, (str, os.PathLike)):
        fs, path = filesystem(str(os.fspath(source)), opts)
        return read_parquet(fs, path)
    return to_arrow_table(source)


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
        fs, path = filesystem(location, opts)
        if not fs.exists(path):
            raise InvalidRequestFileError(f"{location}: does not exist; check the inputs location.")
        from dagster_together.requests.table import sniff_format

        (parquet if sniff_format(fs, path) == "parquet" else jsonl).append(location)
    if parquet and jsonl:
        raise InvalidRequestFileError(
            f"inputs: mixes Parquet ({parquet[0]}) and JSONL ({jsonl[0]}); give one kind."
        )
    if len(parquet) == 1:
        _parquet_file(ins, parquet[0], opts)
        return ins
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


def _parquet_file(ins: _Inputs, location: str, opts: dict[str, Any]) -> None:
    """Inputs given as one Parquet file (e.g. the submit's ``request_rows.parquet``): only the
    ids are read now; the columns are read again, a row group at a time, as they are written."""
    import pyarrow.parquet as pq

    fs, path = filesystem(location, opts)
    with fs.open(path, "rb") as handle:
        reader = pq.ParquetFile(handle)
        names = reader.schema_arrow.names
        if "custom_id" not in names:
            raise InvalidRequestFileError(
                f"{location}: has no 'custom_id' column (columns: {names}); the inputs "
                "need the ids the requests were sent with."
            )
        ids = [
            b.column(0)
            for b in reader.iter_batches(
                batch_size=65_536, columns=["custom_id"], use_threads=False
            )
        ]
    ins.parquet = (fs, path)
    ins.index_ids(ids, location)


class _ParquetColumns:
    """The inputs' columns from their Parquet file, renamed as the join names them, read a
    batch at a time (``read_next_batch``, like an IPC stream reader)."""

    def __init__(self, fs: Any, path: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._handle = fs.open(path, "rb")
        reader = pq.ParquetFile(self._handle, pre_buffer=False)  # the handle buffers already
        arrow = reader.schema_arrow
        order = ["custom_id", *(n for n in arrow.names if n != "custom_id")]
        names = ["custom_id"]
        for name in order[1:]:
            names.append(_free_name(name, names))
        types = [pa.string(), *(arrow.field(n).type for n in order[1:])]
        self.schema = pa.schema(list(zip(names, types, strict=True)))
        self._batches = reader.iter_batches(batch_size=4096, columns=order, use_threads=False)

    def read_next_batch(self) -> pa.RecordBatch:
        import pyarrow as pa

        batch = next(self._batches)
        columns = batch.columns
        if columns[0].type != pa.string():
            columns = [columns[0].cast(pa.string()), *columns[1:]]
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)

    def close(self) -> None:
        self._handle.close()


def _request_schema() -> pa.Schema:
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    body = pa.struct(
        [
            ("model", pa.string()),
            ("prompt", pa.string()),
            ("messages", pa.list_(message)),
            ("file", pa.string()),
        ]
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
            fs, path = filesystem(location, opts)

            # Background threads read, parse and extract; this one spills and keeps ids.
            def extract(b: _Block, location: str = location) -> list[pa.Table]:
                return _request_block(
                    b, location, _pa_read(b, schema) if b.pyarrow_safe() else None
                )

            extracted = _parallel(extract, _line_blocks(fs, path))
            for k, parts in enumerate(_prefetch(extracted), start=1):
                for part in parts:
                    # Small batches: a slice of the spill read back then pins little memory.
                    writer.write_table(part, max_chunksize=4096)
                    ids.extend(part.column("custom_id").chunks)
                if k % blocks._TRIM_EVERY == 0:
                    give_back_memory()
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
        # Read with json at once, not halved like outputs: request files are checked before
        # they are sent, so a refusal here is rarely junk, but lines pyarrow's fixed schema
        # cannot hold (content parts with images, for every line of a vision batch), where
        # halving would parse the block again at every level.
        return [_request_block_slow(block, location)]
    body = table.column("body").combine_chunks()
    prompt = pc.coalesce(
        _last_user_content(pc.struct_field(body, "messages")),
        pc.struct_field(body, "file"),
        pc.struct_field(body, "prompt"),
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
        prompt = request_prompt(body)
        ids.append(custom_id)
        models.append(model if isinstance(model, str) else None)
        prompts.append(prompt)
    schema = _request_columns_schema()
    columns = [ids, models, prompts]
    return pa.Table.from_arrays(
        [pa.array(c, t) for c, t in zip(columns, schema.types, strict=True)], schema=schema
    )
