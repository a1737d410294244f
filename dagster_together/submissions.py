"""Submissions: what one submit asked for, the batches that answer it (follow-ups included), and
its final table.

A submission's rows (ids, content keys, the cache hits, the user's columns) are stored once, in
input order; each of its batches has a small record (attempt, parent). Once every batch has its
results, :func:`assemble_final` writes one row per input row: the last attempt's answer, or the
answer store's for a cached row, with ``attempts``, the ``batch_id`` that answered and
``cached``. Plain Python, no Dagster.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from dagster_together.answers import ANSWER_COLUMNS, AnswerStore
from dagster_together.options import ResubmitOptions
from dagster_together.output_schema import OutputSchema
from dagster_together.storage import BatchStorageLayout, open_pending, publish_parquet

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = [
    "BatchRecord",
    "FinalSummary",
    "Submissions",
    "assemble_final",
    "retryable_rows",
]

# Statuses of a request that a follow-up batch may still answer (``cancelled`` was the user's
# decision; ``succeeded`` is done).
_RETRY_STATUSES = ("failed", "missing", "expired")

FINAL_COLUMNS = (
    "status",
    *ANSWER_COLUMNS,
    "error",
    "error_code",
    "attempts",
    "batch_id",
    "cached",
)


@dataclass(frozen=True)
class BatchRecord:
    """One batch of a submission.

    Attributes:
        submission_id: the submission it answers.
        batch_id: Together's batch id.
        attempt: 1 for the submit's own batches, 2 for their follow-ups, ...
        parent_batch_id: the batch whose failures this one retries (None for attempt 1).
        n_requests: requests in the batch.
    """

    submission_id: str
    batch_id: str
    attempt: int = 1
    parent_batch_id: str | None = None
    n_requests: int = 0


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


class Submissions:
    """Submission records under ``layout``."""

    def __init__(self, layout: BatchStorageLayout) -> None:
        self._layout = layout

    def record(self, record: BatchRecord) -> None:
        """Write a batch's record, in its submission and beside the batch's files."""
        data = json.dumps(asdict(record), sort_keys=True).encode()
        for location in (
            self._layout.submission_batch(record.submission_id, record.batch_id),
            self._layout.batch_record(record.batch_id),
        ):
            with open_pending(location, self._layout.storage_options) as out:
                out.write(data)

    def of_batch(self, batch_id: str) -> BatchRecord | None:
        """The record of ``batch_id``, or None for a batch submitted without one."""
        location = self._layout.batch_record(batch_id)
        fs, path = self._layout.filesystem(location)
        if not fs.exists(path):
            return None
        return BatchRecord(**json.loads(fs.cat_file(path)))

    def batches(self, submission_id: str) -> list[BatchRecord]:
        """Every batch of the submission, by attempt."""
        fs, path = self._layout.filesystem(self._layout.submission_batches(submission_id))
        if not fs.exists(path):
            return []
        records = [
            BatchRecord(**json.loads(fs.cat_file(p))) for p in fs.glob(path.rstrip("/") + "/*.json")
        ]
        return sorted(records, key=lambda r: (r.attempt, r.batch_id))

    def write_inputs(self, submission_id: str, table: pa.Table | Iterable[pa.Table]) -> None:
        """The submission's rows in input order (``custom_id``, the user's columns, ``key``,
        ``cached_batch_id``): one table, or its slices in order (written as they come, so that
        a million rows are never held at once)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        location = self._layout.submission_inputs(submission_id)
        if isinstance(table, pa.Table):
            publish_parquet(table, location, self._layout.storage_options)
            return

        with open_pending(location, self._layout.storage_options, stage_locally=True) as out:
            assert out.local_path is not None  # always, with stage_locally
            writer = None
            try:
                for part in table:
                    if writer is None:
                        writer = pq.ParquetWriter(out.local_path, part.schema)
                    writer.write_table(part)
                if writer is None:
                    raise ValueError("write_inputs: no rows to write.")
            finally:
                if writer is not None:
                    writer.close()

    def write_schema(self, submission_id: str, schema: OutputSchema) -> None:
        """Keep the output schema the submission's answers are parsed with: batches run for
        hours, and the template may change meanwhile."""
        data = json.dumps(
            {"schema": schema.schema, "name": schema.name, "strict": schema.strict}, sort_keys=True
        ).encode()
        with open_pending(
            self._layout.submission_schema(submission_id), self._layout.storage_options
        ) as out:
            out.write(data)

    def schema(self, submission_id: str) -> OutputSchema | None:
        """The submission's output schema, or None when its requests had none."""
        fs, path = self._layout.filesystem(self._layout.submission_schema(submission_id))
        if not fs.exists(path):
            return None
        data = json.loads(fs.cat_file(path))
        return OutputSchema(data["schema"], name=data["name"], strict=data["strict"])

    def complete(self, submission_id: str) -> bool:
        """Whether every batch of the submission has its results (so the final table can be
        assembled)."""
        records = self.batches(submission_id)
        return all(self._layout.exists(self._layout.results_parquet(r.batch_id)) for r in records)


def retryable_rows(results: pa.Table, options: ResubmitOptions) -> list[str]:
    """The ``custom_id`` of every row a follow-up batch may fix."""
    import pyarrow.compute as pc

    status = results["status"]
    code = pc.fill_null(results["error_code"], "")
    fatal = pc.is_in(code, value_set=_as_array(sorted(options.fatal_error_codes)))
    retry = pc.and_(pc.is_in(status, value_set=_as_array(list(_RETRY_STATUSES))), pc.invert(fatal))
    return results.filter(retry)["custom_id"].to_pylist()


def assemble_final(layout: BatchStorageLayout, submission_id: str) -> FinalSummary:
    """Write the submission's final table; one row per input row, in input order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    submissions = Submissions(layout)
    inputs = _read_parquet(layout.submission_inputs(submission_id), layout)
    records = submissions.batches(submission_id)
    wanted = ["custom_id", "status", *ANSWER_COLUMNS, "error", "error_code"]
    # Beside them, what the answers carry on top (the output schema's typed fields, tool calls,
    # reasoning): every other column of the results but the inputs' and the raw request/answer.
    skip = {*wanted, *inputs.column_names, *_NOT_IN_FINAL}
    extra: list[str] = []
    attempts = []
    for record in records:
        location = layout.results_parquet(record.batch_id)
        if not extra:
            fs, path = layout.filesystem(location)
            extra = [n for n in _schema_names(fs, path) if n not in skip]
        table = _read_parquet(location, layout, columns=[*wanted, *extra])
        n = table.num_rows
        attempts.append(
            _cast_text(table)
            .append_column("attempt", pa.array([record.attempt] * n, pa.int64()))
            .append_column("batch_id", pa.array([record.batch_id] * n, pa.string()))
        )
    if attempts:
        every = pa.concat_tables(attempts)
        last = every.group_by("custom_id", use_threads=False).aggregate(
            [("attempt", "max"), ("attempt", "count")]
        )
        last = last.rename_columns(["custom_id", "attempt", "attempts"])
        sent = every.join(last, ["custom_id", "attempt"], join_type="inner").drop_columns("attempt")
    else:
        sent = pa.table(
            {
                **{c: pa.array([], pa.string()) for c in wanted},
                "batch_id": pa.array([], pa.string()),
                "attempts": pa.array([], pa.int64()),
            }
        )
    sent = _cast_text(sent).append_column("cached", pa.array([False] * sent.num_rows, pa.bool_()))

    hits = inputs.filter(pc.is_valid(inputs["cached_batch_id"]))
    cached = _cast_text(AnswerStore(layout).answers(hits["key"]))
    cached_rows = hits.select(["custom_id", "key"]).join(cached, "key", join_type="inner")
    n = cached_rows.num_rows
    cached_rows = pa.table(
        {
            "custom_id": cached_rows["custom_id"],
            "status": pa.array(["succeeded"] * n, pa.string()),
            **{c: cached_rows[c] for c in ANSWER_COLUMNS},
            "error": pa.nulls(n, pa.string()),
            "error_code": pa.nulls(n, pa.string()),
            "batch_id": cached_rows["batch_id"],
            "attempts": pa.array([0] * n, pa.int64()),
            "cached": pa.array([True] * n, pa.bool_()),
        }
    )
    schema = submissions.schema(submission_id)
    typed = _typed_columns(schema, cached_rows["content"]) if schema is not None else {}
    for name, column in typed.items():
        cached_rows = cached_rows.append_column(name, column)
    if attempts:  # what only batch results carry (tool calls, reasoning) stays empty when cached
        for name in extra:
            if name not in typed:
                field = sent.schema.field(name)
                cached_rows = cached_rows.append_column(field, pa.nulls(n, field.type))
    if attempts:
        sent = sent.select(cached_rows.column_names)
    else:  # answered whole by the store: no result file to take types from
        sent = cached_rows.schema.empty_table()
    answered = pa.concat_tables([sent, cached_rows.cast(sent.schema)])
    own = [c for c in inputs.column_names if c not in ("custom_id", "key", "cached_batch_id")]
    ordered = inputs.select(["custom_id", *own]).append_column(
        "_position", pa.array(range(inputs.num_rows), pa.int64())
    )
    final = (
        ordered.join(answered, "custom_id", join_type="left outer")
        .sort_by("_position")
        .drop_columns("_position")
    )
    final = final.set_column(
        final.schema.get_field_index("status"),
        "status",
        pc.fill_null(final["status"], "missing"),
    )
    destination = layout.final_parquet(submission_id)
    publish_parquet(final, destination, layout.storage_options)
    counts = {str(k): int(v) for k, v in _value_counts(final["status"])}
    tokens: dict[str, dict[str, int]] = {}
    for model, usage in _tokens_by_model(final).items():
        tokens[model] = usage
    return FinalSummary(
        destination=destination,
        n_rows=final.num_rows,
        counts=counts,
        n_cached=n,
        tokens_by_model=tokens,
        columns=tuple((f.name, str(f.type)) for f in final.schema),
        preview_rows=tuple(_preview(final)),
    )


def _as_array(values: Iterable[str]) -> Any:
    import pyarrow as pa

    return pa.array(list(values), pa.string())


def _cast_text(table: pa.Table) -> pa.Table:
    """Large strings as plain strings, so that tables from several files concatenate."""
    import pyarrow as pa

    fields = [
        pa.field(f.name, pa.string()) if pa.types.is_large_string(f.type) else f
        for f in table.schema
    ]
    return table.cast(pa.schema(fields))


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


# Results columns the final table leaves out: the request (it is in the inputs) and the raw
# answer (in each batch's results).
_NOT_IN_FINAL = ("request_model", "prompt", "response")


def _schema_names(fs: Any, path: str) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.read_schema(path, filesystem=fs).names)


def _preview(final: pa.Table) -> list[dict[str, Any]]:
    rows = final.slice(0, 5).select(["custom_id", "status", "content", "cached"]).to_pylist()
    for row in rows:
        if isinstance(row["content"], str) and len(row["content"]) > 80:
            row["content"] = row["content"][:77] + "..."
    return rows


def _value_counts(column: Any) -> list[tuple[str, int]]:
    counts = column.value_counts()
    return list(
        zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    )


def _tokens_by_model(final: pa.Table) -> dict[str, dict[str, int]]:
    import pyarrow.compute as pc

    billed = final.filter(pc.invert(pc.fill_null(final["cached"], False)))
    billed = billed.filter(pc.is_valid(billed["model"]))
    if billed.num_rows == 0:
        return {}
    sums = billed.group_by("model").aggregate(
        [("prompt_tokens", "sum"), ("completion_tokens", "sum"), ("total_tokens", "sum")]
    )
    return {
        row["model"]: {
            "prompt_tokens": int(row["prompt_tokens_sum"] or 0),
            "completion_tokens": int(row["completion_tokens_sum"] or 0),
            "total_tokens": int(row["total_tokens_sum"] or 0),
        }
        for row in sums.to_pylist()
    }


def _read_parquet(
    location: str, layout: BatchStorageLayout, columns: list[str] | None = None
) -> Any:
    import pyarrow.parquet as pq

    fs, path = layout.filesystem(location)
    return pq.read_table(path, filesystem=fs, columns=columns)
