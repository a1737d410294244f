"""The request rows the results join reads instead of the request JSONL."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from dagster_together.arrow_values import strings

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

ROW_GROUP_ROWS = 8192
"""Rows per row group of ``request_rows.parquet``: the join reads it a row group at a time."""


class TableSpill:
    """Arrow tables appended in order and read back in order: held in memory, or written to a
    local Arrow IPC file (``path``) when what they hold would grow with the prompts. Reading
    ends the appending; it can be read as often as needed."""

    def __init__(self, path: str | None = None) -> None:
        self._path = path
        self._tables: list[Any] = []  # when not spilled
        self._writer: Any = None
        self._written = False

    def append(self, table: pa.Table) -> None:
        """Add ``table`` after the others (not once reading has started)."""
        if self._path is None:
            self._tables.append(table)
            return
        if self._writer is None:
            import pyarrow.ipc as ipc

            self._writer = ipc.new_stream(self._path, table.schema)
        self._writer.write_table(table)

    def tables(self) -> Iterator[pa.Table]:
        """Every table appended, in order (read back from the file when spilled)."""
        import pyarrow as pa
        import pyarrow.ipc as ipc

        if self._path is None:
            yield from self._tables
            return
        if self._writer is None:
            return
        if not self._written:
            self._writer.close()
            self._written = True
        with ipc.open_stream(pa.OSFile(self._path)) as reader:
            for batch in reader:
                yield pa.Table.from_batches([batch])


class RequestRows:
    """``custom_id``, ``request_model`` and ``prompt`` of requests, in the order added, as the
    join derives them from a request file (:func:`~dagster_together.results.inputs.request_prompt`),
    kept as Arrow blocks: the submit gives them to the join (``request_rows.parquet``) so that it
    never parses the request JSON."""

    _BLOCK = 10_000

    def __init__(self, spill: str | None = None) -> None:
        """``spill``: a local file the blocks are written to (Arrow IPC) instead of memory."""
        self._ids: list[str] = []
        self._models: list[str | None] = []
        self._prompts: list[str | None] = []
        self._blocks = TableSpill(spill)

    def add(self, request: Any) -> None:
        """Add one request (a mapping with ``custom_id`` and ``body``)."""
        from dagster_together.results.inputs import request_prompt

        body = request.get("body")
        model = body.get("model") if isinstance(body, dict) else None
        self._ids.append(str(request.get("custom_id")))
        self._models.append(model if isinstance(model, str) else None)
        self._prompts.append(request_prompt(body))
        if len(self._ids) >= self._BLOCK:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if not self._ids:
            return
        self._blocks.append(
            pa.Table.from_arrays(
                [
                    strings(self._ids),
                    strings(self._models),
                    strings(self._prompts),
                ],
                schema=_schema(),
            )
        )
        self._ids, self._models, self._prompts = [], [], []

    def blocks(self) -> Iterator[pa.Table]:
        """Every request added, in order, a block at a time (read back from the spill)."""
        self._flush()
        return self._blocks.tables()

    def table(self) -> pa.Table:
        """Every request added, as one pyarrow table."""
        import pyarrow as pa

        blocks = list(self.blocks())
        return pa.concat_tables(blocks) if blocks else _schema().empty_table()


def _schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [("custom_id", pa.string()), ("request_model", pa.string()), ("prompt", pa.string())]
    )


class RowStream:
    """The rows of a sequence of tables (or record batches), taken ``n`` at a time in order:
    lines a stream up with the request chunks without holding it whole."""

    def __init__(self, parts: Iterable[Any]) -> None:
        self._parts = iter(parts)
        self._pending: list[Any] = []
        self._have = 0

    def take(self, n: int) -> pa.Table:
        """The next ``n`` rows (fewer only where the stream ends)."""
        import pyarrow as pa

        while self._have < n:
            part = next(self._parts, None)
            if part is None:
                break
            if isinstance(part, pa.RecordBatch):
                part = pa.Table.from_batches([part])
            self._pending.append(part)
            self._have += part.num_rows
        if not self._pending:
            raise ValueError("RowStream.take: the stream has no rows left.")
        table = pa.concat_tables(self._pending)
        head, rest = table.slice(0, n), table.slice(n)
        self._pending, self._have = [rest], rest.num_rows
        return head
