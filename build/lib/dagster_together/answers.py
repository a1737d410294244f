"""The answer store: every answer Together gave once, kept on the user's storage by a content key
of its request, so that a request asked again is answered from it instead of paid again.

A request's key is a hash of its canonical body (model, messages, every parameter; keys sorted)
and endpoint, independent of ``custom_id``: a changed system prompt, model or parameter changes
it. Each batch adds one Parquet file (``answers/batch_id=<id>/part-0.parquet``, published
atomically), so two submits running at once never write the same file, and a lookup streams the
store's ``key`` column with the wanted keys as a filter: memory follows the wanted keys, not the
store.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dagster_together.storage import BatchStorageLayout, publish_parquet

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = ["ANSWER_COLUMNS", "AnswerStore", "request_key"]

# What an answer keeps: enough to stand in for the result row of the request it answers.
ANSWER_COLUMNS = (
    "content",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "model",
)


def request_key(endpoint: str, body: Mapping[str, Any]) -> str:
    """The content key of a request: 32 hex digits of the SHA-256 of its canonical JSON."""
    text = json.dumps(
        {"endpoint": endpoint, "body": body},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class AnswerStore:
    """The answers under ``layout.answers_url``."""

    def __init__(self, layout: BatchStorageLayout) -> None:
        self._layout = layout

    def lookup(self, keys: pa.Array) -> pa.Table:
        """``key`` and ``batch_id`` (the batch that paid) of every wanted key the store holds,
        one row per key."""
        return _first_per_key(self._scan(keys, ["key", "batch_id"]))

    def answers(self, keys: pa.Array) -> pa.Table:
        """The stored answers of ``keys``: ``key``, :data:`ANSWER_COLUMNS`, ``batch_id``."""
        return _first_per_key(self._scan(keys, ["key", *ANSWER_COLUMNS, "batch_id"]))

    def add(self, batch_id: str, results: pa.Table, keys: pa.Table) -> int:
        """Store the succeeded rows of one batch's ``results`` (joined to ``keys``:
        ``custom_id``, ``key``); returns how many."""
        import pyarrow as pa
        import pyarrow.compute as pc

        succeeded = results.filter(pc.equal(results["status"], "succeeded"))
        answered = succeeded.select(["custom_id", *ANSWER_COLUMNS]).join(
            keys, "custom_id", join_type="inner"
        )
        table = answered.select(["key", *ANSWER_COLUMNS]).append_column(
            "batch_id", pa.array([batch_id] * answered.num_rows, pa.string())
        )
        publish_parquet(table, self._layout.answers_parquet(batch_id), self._layout.storage_options)
        return table.num_rows

    def _scan(self, keys: pa.Array, columns: list[str]) -> pa.Table:
        import pyarrow as pa
        import pyarrow.dataset as ds

        fs, root = self._layout.filesystem(self._layout.answers_url)
        if len(keys) == 0 or not fs.exists(root):
            return _empty(columns)
        dataset = ds.dataset(
            root,
            filesystem=fs,
            format="parquet",
            partitioning=ds.partitioning(pa.schema([("batch_id", pa.string())]), flavor="hive"),
        )
        # One file and one batch ahead at a time: memory follows the wanted keys, not the store.
        scanner = dataset.scanner(
            columns=columns,
            filter=ds.field("key").isin(keys),
            batch_readahead=1,
            fragment_readahead=1,
        )
        found = [batch for batch in scanner.to_batches() if batch.num_rows]
        return pa.Table.from_batches(found, schema=scanner.projected_schema)


def _first_per_key(table: pa.Table) -> pa.Table:
    """One row per key (the same request answered twice keeps the first answer found)."""
    import pyarrow as pa

    if table.num_rows == 0:
        return table
    firsts = table.append_column("_row", pa.array(range(table.num_rows), pa.int64()))
    picked = firsts.group_by("key", use_threads=False).aggregate([("_row", "min")])
    return table.take(picked["_row_min"])


def _empty(columns: list[str]) -> pa.Table:
    import pyarrow as pa

    types = {
        "prompt_tokens": pa.int64(),
        "completion_tokens": pa.int64(),
        "total_tokens": pa.int64(),
    }
    return pa.table({c: pa.array([], types.get(c, pa.string())) for c in columns})
