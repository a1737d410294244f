"""Submissions: what one submit asked for, and the batches that answer it (follow-ups included).

A submission's rows (ids, content keys, the cache hits, the user's columns) are stored once, in
input order; each of its batches has a small record (attempt, parent). Once every batch has its
results, :func:`dagster_together.final_table.assemble_final` writes its final table. Plain
Python, no Dagster.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from dagster_together.arrow_values import strings
from dagster_together.options import ResubmitOptions
from dagster_together.output_schema import OutputSchema
from dagster_together.storage import BatchStorageLayout, open_pending, publish_parquet

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = [
    "BatchRecord",
    "Submissions",
    "retryable_rows",
]

# Statuses of a request that a follow-up batch may still answer (``cancelled`` was the user's
# decision; ``succeeded`` is done).
_RETRY_STATUSES = ("failed", "missing", "expired")


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
    code = pc.fill_null(results["error_code"], strings([""])[0])
    fatal = pc.is_in(code, value_set=strings(sorted(options.fatal_error_codes)))
    retry = pc.and_(pc.is_in(status, value_set=strings(list(_RETRY_STATUSES))), pc.invert(fatal))
    return results.filter(retry)["custom_id"].to_pylist()
