"""The request rows the results join reads instead of the request JSONL."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ROW_GROUP_ROWS = 8192
"""Rows per row group of ``request_rows.parquet``: the join reads it a row group at a time."""


class RequestRows:
    """``custom_id``, ``request_model`` and ``prompt`` of requests, in the order added, as the
    join derives them from a request file (:func:`~dagster_together.results.inputs.request_prompt`),
    kept as Arrow blocks: the submit gives them to the join (``request_rows.parquet``) so that it
    never parses the request JSON."""

    _BLOCK = 10_000

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._models: list[str | None] = []
        self._prompts: list[str | None] = []
        self._blocks: list[Any] = []  # pyarrow tables

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

        if self._ids:
            self._blocks.append(
                pa.table(
                    {
                        "custom_id": pa.array(self._ids, pa.string()),
                        "request_model": pa.array(self._models, pa.string()),
                        "prompt": pa.array(self._prompts, pa.string()),
                    }
                )
            )
            self._ids, self._models, self._prompts = [], [], []

    def table(self) -> Any:
        """Every request added, as one pyarrow table."""
        import pyarrow as pa

        self._flush()
        schema = pa.schema(
            [("custom_id", pa.string()), ("request_model", pa.string()), ("prompt", pa.string())]
        )
        return pa.concat_tables(self._blocks) if self._blocks else schema.empty_table()


def write_request_rows(
    rows: Any,
    columns: Any,
    location: str,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Publish one batch's ``request_rows.parquet`` at ``location``: ``rows`` (a table from
    :meth:`RequestRows.table`) with the user's ``columns`` (``custom_id`` first, lined up with
    ``rows``; None for none), named as the join names them."""
    from dagster_together.results.inputs import request_rows_table
    from dagster_together.storage import publish_parquet

    publish_parquet(
        request_rows_table(rows, columns),
        location,
        storage_options,
        row_group_size=ROW_GROUP_ROWS,
    )
