"""Where a batch pipeline keeps its files on the user's storage (a local path or an fsspec URL).

::

    {storage_url}/batches/{batch_id}/input.jsonl      the request file exactly as uploaded
    {storage_url}/batches/{batch_id}/inputs.parquet   custom_id + the user's own columns
    {storage_url}/batches/{batch_id}/output.jsonl     Together's output file, as downloaded
    {storage_url}/batches/{batch_id}/errors.jsonl     Together's error file, as downloaded
    {storage_url}/batches/{batch_id}/keys.parquet     custom_id -> the request's content key
    {storage_url}/batches/{batch_id}/submission.json  its submission and attempt
    {storage_url}/results/batch_id={batch_id}/part-0.parquet   the joined results
    {storage_url}/answers/batch_id={batch_id}/part-0.parquet   the batch's answers, by content key
    {storage_url}/submissions/{submission_id}/inputs.parquet   a submission's rows, in input order
    {storage_url}/submissions/{submission_id}/batches/{batch_id}.json   its batches, one file each
    {storage_url}/submissions/{submission_id}/output_schema.json  the answers' schema, if any
    {storage_url}/final/submission={submission_id}/part-0.parquet  its final table

``results/`` and ``final/`` are hive-partitioned Parquet datasets (every part of one has the same
schema; files being written are hidden ``.part`` files no reader picks up). Which one to read:

* ``{storage_url}/final/submission={submission_id}/``: one row per prompt of that submission,
  with its final status (follow-up answers and cached answers included). Point a reader at one
  submission's folder: ``final/**`` holds every submission, so a prompt submitted twice is there
  twice (``WHERE submission = ...`` in SQL picks one).
* ``{storage_url}/results/``: one row per request each batch was sent (``batch_id`` is the
  partition column), every batch of every submission. A prompt retried by a follow-up batch is
  in both batches; a prompt the answer store answered is in none.

DuckDB: ``read_parquet('{storage_url}/results/**/*.parquet', hive_partitioning = true)``;
pyarrow: ``pyarrow.dataset.dataset(layout.results_url, format="parquet", partitioning="hive")``;
Spark and Trino read the same folders as hive-partitioned tables.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dagster_together.storage.publish import open_pending, publish_file
from dagster_together.storage.urls import filesystem, join

__all__ = ["BatchStorageLayout"]


@dataclass(frozen=True)
class BatchStorageLayout:
    """The file layout of one batch pipeline under ``storage_url``.

    Attributes:
        storage_url: a local directory or an fsspec URL prefix (``s3://bucket/prefix``).
        storage_options: passed to fsspec (credentials, endpoint); never shown by ``repr``.
    """

    storage_url: str
    storage_options: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    def batch_dir(self, batch_id: str) -> str:
        """``{storage_url}/batches/{batch_id}``: the raw files of one batch."""
        return join(self.storage_url, "batches", _safe(batch_id))

    def input_jsonl(self, batch_id: str) -> str:
        """The request JSONL exactly as it was uploaded."""
        return join(self.batch_dir(batch_id), "input.jsonl")

    def inputs_parquet(self, batch_id: str) -> str:
        """``custom_id`` plus the user's own columns for this batch's requests."""
        return join(self.batch_dir(batch_id), "inputs.parquet")

    def request_rows_parquet(self, batch_id: str) -> str:
        """``custom_id``, ``request_model``, ``prompt`` and the user's columns, in request order:
        the results join reads it instead of parsing the request JSONL."""
        return join(self.batch_dir(batch_id), "request_rows.parquet")

    def output_jsonl(self, batch_id: str) -> str:
        """Together's output file."""
        return join(self.batch_dir(batch_id), "output.jsonl")

    def errors_jsonl(self, batch_id: str) -> str:
        """Together's error file."""
        return join(self.batch_dir(batch_id), "errors.jsonl")

    @property
    def results_url(self) -> str:
        """The root of the hive-partitioned results dataset (every batch)."""
        return join(self.storage_url, "results")

    def results_parquet(self, batch_id: str) -> str:
        """The joined results of one batch."""
        return join(self.results_url, f"batch_id={_safe(batch_id)}", "part-0.parquet")

    def batch_record(self, batch_id: str) -> str:
        """Which submission the batch answers, and its attempt."""
        return join(self.batch_dir(batch_id), "submission.json")

    def keys_parquet(self, batch_id: str) -> str:
        """``custom_id`` and content key of this batch's requests (for the answer store)."""
        return join(self.batch_dir(batch_id), "keys.parquet")

    @property
    def answers_url(self) -> str:
        """The root of the answer store (every batch's successful answers)."""
        return join(self.storage_url, "answers")

    def answers_parquet(self, batch_id: str) -> str:
        """One batch's successful answers."""
        return join(self.answers_url, f"batch_id={_safe(batch_id)}", "part-0.parquet")

    def submission_dir(self, submission_id: str) -> str:
        """``{storage_url}/submissions/{submission_id}``: what one submit run asked for."""
        return join(self.storage_url, "submissions", _safe(submission_id))

    def submission_inputs(self, submission_id: str) -> str:
        """A submission's rows in input order: ids, content keys, cache hits, user columns."""
        return join(self.submission_dir(submission_id), "inputs.parquet")

    def submission_schema(self, submission_id: str) -> str:
        """The output schema the submission's answers are parsed with (JSON Schema)."""
        return join(self.submission_dir(submission_id), "output_schema.json")

    def submission_batches(self, submission_id: str) -> str:
        """The folder of a submission's batch records."""
        return join(self.submission_dir(submission_id), "batches")

    def submission_batch(self, submission_id: str, batch_id: str) -> str:
        """The record of one batch of a submission (attempt, parent)."""
        return join(self.submission_batches(submission_id), f"{_safe(batch_id)}.json")

    @property
    def final_url(self) -> str:
        """The root of the final tables (one per submission, hive-partitioned)."""
        return join(self.storage_url, "final")

    def final_parquet(self, submission_id: str) -> str:
        """A submission's final table."""
        return join(self.final_url, f"submission={_safe(submission_id)}", "part-0.parquet")

    # -- small fsspec helpers ------------------------------------------------------------------
    def filesystem(self, location: str) -> tuple[Any, str]:
        """``(fs, path)`` for a location of this layout."""
        return filesystem(location, self.storage_options)

    def exists(self, location: str) -> bool:
        """Whether ``location`` exists."""
        fs, path = self.filesystem(location)
        return bool(fs.exists(path))

    def put_file(self, local_path: str | os.PathLike[str], location: str) -> None:
        """Copy a local file to ``location``, published atomically (parents created for local
        paths): a failed or killed copy leaves no partial file where a finished one is expected."""
        publish_file(local_path, location, self.storage_options)

    def check_writable(self) -> None:
        """Publish, read back and remove a small file under ``storage_url``, the way every file
        of the pipeline is written; raises what the storage raises (no credentials, no bucket,
        read-only) before anything is paid for."""
        probe = join(self.storage_url, f".write-probe-{uuid.uuid4().hex}")
        payload = b"dagster-together can write here\n"
        with open_pending(probe, self.storage_options) as out:
            out.write(payload)
        fs, path = self.filesystem(probe)
        try:
            if fs.cat_file(path) != payload:
                raise OSError(f"{probe} read back other bytes than were written")
        finally:
            fs.rm_file(path)


# Together's batch ids are UUIDs. A whitelist, not a blacklist: besides path separators, fsspec
# gives meaning to "::" (URL chaining) and glob characters, and an id is never trusted as a path.
_BATCH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _safe(batch_id: str) -> str:
    if not isinstance(batch_id, str) or not _BATCH_ID.fullmatch(batch_id):
        raise ValueError(
            f"{batch_id!r} is not a usable batch id: expected letters, digits, '.', '_' or '-' "
            "(Together's batch ids are UUIDs)."
        )
    return batch_id
