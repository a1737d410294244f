"""A submission's final table: one row per input row, in input order, with the last attempt's
answer (or the answer store's, for a row answered from it), ``attempts``, the ``batch_id`` that
answered and ``cached``. Plain Python, no Dagster.

It is assembled a window of input rows at a time, so that memory stays flat as submissions grow:
only the input ids (sorted, for lookups) and two small numbers a row stay in memory. Every
batch's results are read a slice at a time, latest attempt first; a row nobody answered yet goes
to a local Arrow file for its window of input positions. The rows answered from the store are
read from the store files of the batches that paid for them, the same way. Then each window is
read back, put in input order beside the inputs' own columns, and written as one row group.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dagster_together.answers import ANSWER_COLUMNS, AnswerStore
from dagster_together.output_schema import OutputSchema
from dagster_together.storage import BatchStorageLayout, open_parquet, open_pending
from dagster_together.submissions import BatchRecord, Submissions

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pyarrow as pa

__all__ = ["FINAL_COLUMNS", "FinalSummary", "assemble_final"]

FINAL_COLUMNS = (
    "status",
    *ANSWER_COLUMNS,
    "error",
    "error_code",
    "batch_id",
    "attempts",
    "cached",
)
"""The columns after the inputs' own, before what the answers carry on top (the output schema's
typed fields, tool calls, reasoning)."""

# What one window of input rows may hold (its inputs and answers), and its bounds in rows: a
# window is a row group of the final table.
_WINDOW_BYTES = 4 << 20
_WINDOW_ROWS = (1_024, 65_536)
_MAX_WINDOWS = 512  # local files open at once; beyond, windows grow with the submission
_SLICE_ROWS = 16_384  # rows of a results file read at once

# Results columns the final table leaves out: the request (it is in the inputs) and the raw
# answer (in each batch's results).
_NOT_IN_FINAL = ("request_model", "prompt", "response")


@dataclass(frozen=True)
class FinalSummary:
    """What :func:`assemble_final` wrote."""

    destination: str
    n_rows: int
    counts: dict[str, int]
    n_cached: int
    tokens_by_model: dict[str, dict[str, int]] = field(default_factory=dict)
    columns: tuple[tuple[str, str], ...] = ()
    preview_rows: tuple[dict[str, Any], ...] = ()


def assemble_final(layout: BatchStorageLayout, submission_id: str) -> FinalSummary:
    """Write the submission's final table; one row per input row, in input order."""
    submissions = Submissions(layout)
    records = submissions.batches(submission_id)
    output_schema = submissions.schema(submission_id)
    with (
        _open_parquet(layout, layout.submission_inputs(submission_id)) as inputs,
        tempfile.TemporaryDirectory(prefix="dagster-together-final-") as tmp,
    ):
        plan = _Plan.of(layout, inputs, records, output_schema)
        rows = _Rows(inputs)
        with _Windows(tmp, plan) as windows:
            for record in reversed(records):  # the last attempt wins
                _add_batch(layout, record, plan, rows, windows)
            n_cached = _add_cached(layout, inputs, plan, rows, windows, output_schema)
        destination = layout.final_parquet(submission_id)
        summary = _Summary()
        with open_pending(destination, layout.storage_options, stage_locally=True) as out:
            assert out.local_path is not None
            _write(out.local_path, inputs, plan, rows, windows, summary)
    return FinalSummary(
        destination=destination,
        n_rows=rows.n,
        counts=summary.counts,
        n_cached=n_cached,
        tokens_by_model=summary.tokens,
        columns=tuple((f.name, str(f.type)) for f in plan.final),
        preview_rows=tuple(summary.preview),
    )


@dataclass(frozen=True)
class _Plan:
    """The final table's columns, where each comes from, and its windows."""

    own: list[str]  # the inputs' own columns (beside custom_id)
    final: pa.Schema  # custom_id, own (renamed when an answer column has the name), answers
    answers: pa.Schema  # what a window's spill file holds: position, then the answer columns
    extra: list[str]  # the answers' further columns (typed fields, tool calls...)
    window: int  # input rows a window

    @staticmethod
    def of(
        layout: BatchStorageLayout,
        inputs: Any,
        records: list[BatchRecord],
        output_schema: OutputSchema | None,
    ) -> _Plan:
        import pyarrow as pa

        input_schema = inputs.schema_arrow
        own = [n for n in input_schema.names if n not in ("custom_id", "key", "cached_batch_id")]
        typed = {f.name: f for f in output_schema.arrow_fields()} if output_schema else {}
        results: dict[str, pa.Field] = {}
        per_row = _bytes_per_row(inputs, ["custom_id", *own])
        if records:  # what the answers carry beyond the standard columns, from the first batch
            with _open_parquet(layout, layout.results_parquet(records[0].batch_id)) as first:
                skip = {"custom_id", *FINAL_COLUMNS, *input_schema.names, *_NOT_IN_FINAL}
                results = {f.name: f for f in first.schema_arrow if f.name not in skip}
                per_row += _bytes_per_row(first, [*FINAL_COLUMNS, *results])
        # The output schema's fields first (typed from the results when they have them), then
        # the rest; without batches (answered whole by the store) only the typed fields.
        extra = [*typed, *(n for n in results if n not in typed)]
        fields = {**typed, **results}
        answer_fields = [
            pa.field("status", pa.string()),
            *(_answer_field(c) for c in ANSWER_COLUMNS),
            pa.field("error", pa.string()),
            pa.field("error_code", pa.string()),
            pa.field("batch_id", pa.string()),
            pa.field("attempts", pa.int64()),
            pa.field("cached", pa.bool_()),
            *(_plain_field(fields[n]) for n in extra),
        ]
        taken = {f.name for f in answer_fields}
        final = pa.schema(
            [
                _plain_field(input_schema.field("custom_id")),
                *(
                    _plain_field(input_schema.field(n)).with_name(f"input_{n}" if n in taken else n)
                    for n in own
                ),
                *answer_fields,
            ]
        )
        spilled = [f for f in answer_fields if f.name != "attempts"]
        n = max(inputs.metadata.num_rows, 1)
        window = max(_WINDOW_ROWS[0], min(_WINDOW_ROWS[1], _WINDOW_BYTES // max(per_row, 1)))
        window = max(window, -(-n // _MAX_WINDOWS))
        return _Plan(
            own=own,
            final=final,
            answers=pa.schema([pa.field("_position", pa.int64()), *spilled]),
            extra=extra,
            window=window,
        )


class _Rows:
    """Per input row: how many batches had it, and whether it has its answer yet; the sorted
    input ids, to find a row's position."""

    def __init__(self, inputs: Any) -> None:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        ids = inputs.read(columns=["custom_id"], use_threads=False).column(0)
        ids = ids.combine_chunks().cast(pa.string())
        self.n = len(ids)
        order = pc.sort_indices(ids)
        self._sorted = ids.take(order)
        del ids
        self._order = np.asarray(order).astype(np.uint32 if self.n < 2**32 else np.int64)
        del order
        _give_back()
        self.attempts = np.zeros(self.n, dtype=np.uint16)
        self.answered = np.zeros(self.n, dtype=bool)
        self.cached = np.zeros(self.n, dtype=bool)

    def positions(self, ids: pa.Array) -> np.ndarray:
        """Input position of each id, -1 where it is not an input."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        if self.n == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        ids = ids.cast(pa.string())
        found = np.asarray(pc.search_sorted(self._sorted, ids)).astype(np.int64)
        np.minimum(found, self.n - 1, out=found)
        same = np.asarray(pc.fill_null(pc.equal(self._sorted.take(pa.array(found)), ids), False))
        return np.where(same, self._order[found].astype(np.int64), -1)

    def claim(self, positions: np.ndarray) -> np.ndarray:
        """Which of ``positions`` (-1: none) get their answer here: the first of each that had
        none yet."""
        import numpy as np

        candidates = np.flatnonzero(positions >= 0)
        candidates = candidates[~self.answered[positions[candidates]]]
        _, first = np.unique(positions[candidates], return_index=True)
        claimed = candidates[np.sort(first)]
        self.answered[positions[claimed]] = True
        return claimed


class _Windows:
    """The answers, a local Arrow stream file per window of input positions."""

    def __init__(self, directory: str, plan: _Plan) -> None:
        self._directory = directory
        self._plan = plan
        self._writers: dict[int, Any] = {}

    def __enter__(self) -> _Windows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, positions: np.ndarray, answers: pa.Table) -> None:
        """Spill ``answers`` (the spill schema's columns but ``_position``), the row at
        ``positions``."""
        import numpy as np
        import pyarrow as pa

        if not len(positions):
            return
        table = answers.add_column(0, "_position", pa.array(positions, pa.int64()))
        table = table.select(self._plan.answers.names).cast(self._plan.answers)
        windows = positions // self._plan.window
        order = np.argsort(windows, kind="stable")
        windows = windows[order]
        table = table.take(pa.array(order))
        bounds = np.flatnonzero(np.diff(windows)) + 1
        for start, end in zip([0, *bounds.tolist()], [*bounds.tolist(), len(windows)], strict=True):
            self._writer(int(windows[start])).write_table(table.slice(start, end - start))

    def read(self, window: int) -> pa.Table | None:
        """The answers of one window's rows, or None."""
        import pyarrow as pa

        path = self._path(window)
        if not os.path.exists(path):
            return None
        with pa.OSFile(path, "rb") as source:
            return pa.ipc.open_stream(source).read_all()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def _writer(self, window: int) -> Any:
        import pyarrow as pa

        writer = self._writers.get(window)
        if writer is None:
            sink = pa.OSFile(self._path(window), "wb")
            writer = self._writers[window] = pa.ipc.new_stream(sink, self._plan.answers)
        return writer

    def _path(self, window: int) -> str:
        return os.path.join(self._directory, f"window-{window:06d}.arrows")


def _add_batch(
    layout: BatchStorageLayout,
    record: BatchRecord,
    plan: _Plan,
    rows: _Rows,
    windows: _Windows,
) -> None:
    """Count one batch's rows as attempts, and spill those no later attempt answered."""
    import numpy as np
    import pyarrow as pa

    with _open_parquet(layout, layout.results_parquet(record.batch_id)) as results:
        names = set(results.schema_arrow.names)
        wanted = ["status", *ANSWER_COLUMNS, "error", "error_code", *plan.extra]
        read = ["custom_id", *(c for c in wanted if c in names)]
        for batch in results.iter_batches(batch_size=_SLICE_ROWS, columns=read, use_threads=False):
            _give_back()
            positions = rows.positions(batch.column(0))
            known = positions[positions >= 0]
            np.add.at(rows.attempts, known, 1)
            claimed = rows.claim(positions)
            if not len(claimed):
                continue
            answers = pa.Table.from_batches([batch]).take(pa.array(claimed))
            n = len(claimed)
            answers = _with_columns(
                answers,
                plan,
                batch_id=pa.array([record.batch_id] * n, pa.string()),
                cached=pa.array([False] * n, pa.bool_()),
            )
            windows.add(positions[claimed], answers)


def _add_cached(
    layout: BatchStorageLayout,
    inputs: Any,
    plan: _Plan,
    rows: _Rows,
    windows: _Windows,
    output_schema: OutputSchema | None,
) -> int:
    """Spill the answers of the rows answered from the store (those no batch answered); how
    many there are."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from dagster_together.keyset import KeySet

    keys, positions, paid_by = [], [], set()
    start = 0
    for batch in inputs.iter_batches(
        batch_size=_SLICE_ROWS, columns=["key", "cached_batch_id"], use_threads=False
    ):
        hits = np.flatnonzero(np.asarray(pc.is_valid(batch.column(1))))
        if len(hits):
            keys.append(batch.column(0).take(pa.array(hits)))
            positions.append(hits + start)
            paid_by.update(pc.unique(batch.column(1)).drop_null().to_pylist())
        start += batch.num_rows
    if not keys:
        return 0
    wanted = KeySet(pa.chunked_array(keys, pa.string()))
    at = np.concatenate(positions)
    del keys, positions
    n_cached = 0
    store = AnswerStore(layout)
    # From the batches that paid for them; an answer missing there (a store file removed by
    # hand) is looked for in every batch's answers.
    for batch_ids in (paid_by, None):
        for batch_id, answers, groups in store.matches(wanted, ANSWER_COLUMNS, batch_ids):
            members, which = wanted.members(groups)
            claimed = rows.claim(at[members])
            if not len(claimed):
                continue
            answers = pa.Table.from_batches([answers]).take(pa.array(which[claimed]))
            n = len(claimed)
            typed = _typed_columns(output_schema, answers["content"]) if output_schema else {}
            answers = _with_columns(
                answers,
                plan,
                status=pa.array(["succeeded"] * n, pa.string()),
                batch_id=pa.array([batch_id] * n, pa.string()),
                cached=pa.array([True] * n, pa.bool_()),
                **typed,
            )
            rows.cached[at[members[claimed]]] = True
            windows.add(at[members[claimed]], answers)
            n_cached += n
        if rows.answered[at].all():
            break
    return n_cached


def _with_columns(table: pa.Table, plan: _Plan, **columns: Any) -> pa.Table:
    """``table`` with ``columns`` set, and nulls for the spill schema's columns it lacks."""
    import pyarrow as pa

    for name, column in columns.items():
        if name in table.column_names:
            table = table.set_column(table.schema.get_field_index(name), name, column)
        else:
            table = table.append_column(name, column)
    for f in plan.answers:
        if f.name != "_position" and f.name not in table.column_names:
            table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return table


@dataclass
class _Summary:
    """What the windows add up to: rows per status, billed tokens per model, the first rows."""

    counts: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, dict[str, int]] = field(default_factory=dict)
    preview: list[dict[str, Any]] = field(default_factory=list)

    def add(self, table: pa.Table) -> None:
        import pyarrow.compute as pc

        counts = table["status"].value_counts()
        for value, n in zip(
            counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
        ):
            self.counts[str(value)] = self.counts.get(str(value), 0) + int(n)
        billed = table.filter(
            pc.and_(pc.invert(pc.fill_null(table["cached"], False)), pc.is_valid(table["model"]))
        )
        if billed.num_rows:
            names = ("prompt_tokens", "completion_tokens", "total_tokens")
            sums = billed.group_by("model", use_threads=False).aggregate(
                [(n, "sum") for n in names]
            )
            for row in sums.to_pylist():
                usage = self.tokens.setdefault(row["model"], dict.fromkeys(names, 0))
                for n in names:
                    usage[n] += int(row[f"{n}_sum"] or 0)
        if not self.preview:
            self.preview = _preview(table)


def _write(
    path: str, inputs: Any, plan: _Plan, rows: _Rows, windows: _Windows, summary: _Summary
) -> None:
    """Write the final table to the local ``path``, a window at a time."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    columns = ["custom_id", *plan.own]
    answer_names = [f.name for f in plan.answers][1:]
    with pq.ParquetWriter(path, plan.final) as writer:
        for window, own in enumerate(_windows_of(inputs, columns, plan.window, rows.n)):
            start, n = window * plan.window, own.num_rows
            answers = windows.read(window)
            slots = np.full(n, -1, dtype=np.int64)  # which spilled row answers each input row
            if answers is not None:
                at = np.asarray(answers["_position"]) - start
                slots[at] = np.arange(len(at))
                answers = answers.select(answer_names)
            else:
                answers = plan.answers.empty_table().select(answer_names)
            table = answers.take(pa.array(slots, mask=slots < 0))
            status = pc.fill_null(table["status"], "missing")
            table = table.set_column(0, "status", status)
            tried = rows.attempts[start : start + n].astype(np.int64)
            cached = rows.cached[start : start + n]
            attempts = pa.array(tried, mask=(tried == 0) & ~cached)
            table = table.add_column(table.schema.get_field_index("cached"), "attempts", attempts)
            table = pa.Table.from_arrays(
                [*own.columns, *table.columns], names=plan.final.names
            ).cast(plan.final)
            summary.add(table)
            writer.write_table(table)
            del table, answers, own
            _give_back()


def _windows_of(inputs: Any, columns: list[str], window: int, n: int) -> Iterator[pa.Table]:
    """The inputs' ``columns``, ``window`` rows at a time (the last may be shorter; one empty
    table for no rows)."""
    import pyarrow as pa

    pending: list[Any] = []
    held = 0
    for batch in inputs.iter_batches(batch_size=window, columns=columns, use_threads=False):
        pending.append(batch)
        held += batch.num_rows
        while held >= window:
            table = pa.Table.from_batches(pending).combine_chunks()
            yield table.slice(0, window)
            rest = table.slice(window)
            pending, held = rest.to_batches(), rest.num_rows
    if held or n == 0:
        schema = pa.schema([inputs.schema_arrow.field(c) for c in columns])
        yield pa.Table.from_batches(pending, schema=schema)


def _typed_columns(schema: OutputSchema, contents: Any) -> dict[str, Any]:
    """The output schema's fields of stored answers, as typed columns (a stored answer passed
    the same schema once: its key includes the request's ``response_format``)."""
    import pyarrow as pa

    fields = schema.arrow_fields()
    rows = []
    for text in contents.to_pylist():
        try:
            rows.append(schema.parse(text))
        except ValueError:
            rows.append({})
    return {f.name: pa.array([row.get(f.name) for row in rows], f.type) for f in fields}


def _preview(final: pa.Table) -> list[dict[str, Any]]:
    rows = final.slice(0, 5).select(["custom_id", "status", "content", "cached"]).to_pylist()
    for row in rows:
        if isinstance(row["content"], str) and len(row["content"]) > 80:
            row["content"] = row["content"][:77] + "..."
    return rows


def _open_parquet(layout: BatchStorageLayout, location: str) -> AbstractContextManager[Any]:
    """A ``pyarrow.parquet.ParquetFile`` on ``location``, read through a buffer (never a whole
    row group at once)."""
    fs, path = layout.filesystem(location)
    return open_parquet(fs, path, buffer_size=1 << 20, pre_buffer=False)


def _bytes_per_row(parquet: Any, columns: list[str]) -> int:
    """Uncompressed bytes a row of ``columns``, from the file's metadata."""
    metadata = parquet.metadata
    wanted = set(columns)
    size = 0
    for i in range(metadata.num_row_groups):
        group = metadata.row_group(i)
        for j in range(group.num_columns):
            chunk = group.column(j)
            if chunk.path_in_schema.split(".")[0] in wanted:
                size += chunk.total_uncompressed_size
    return size // max(metadata.num_rows, 1)


def _plain_field(f: pa.Field) -> pa.Field:
    """Large strings as plain strings, so that every file's rows fit one schema."""
    import pyarrow as pa

    return f.with_type(pa.string()) if pa.types.is_large_string(f.type) else f


def _give_back() -> None:
    """Return what pyarrow's pool keeps of freed memory: it keeps it for later reads, and over a
    stream of slices and windows that piles up tens of MB."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def _answer_field(name: str) -> pa.Field:
    import pyarrow as pa

    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    return pa.field(name, pa.int64() if name in counts else pa.string())
