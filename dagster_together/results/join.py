"""``join_results``, which runs the steps of the join in order, and the summary it returns.

The outputs start to be read (``outputs``) while the inputs are (``inputs``); the result rows
are spilled by input position (``buckets``) about ``_SPILL_BYTES`` at a time, then assembled in
input order into the Parquet file (``assemble``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from dagster_together.memory import ArrowMemoryWatch, give_back_memory
from dagster_together.results import blocks
from dagster_together.results.assemble import _assemble
from dagster_together.results.blocks import Locations, _as_list
from dagster_together.results.buckets import _Buckets
from dagster_together.results.inputs import _read_inputs
from dagster_together.results.outputs import RAW_RESPONSES, _read_results, _Report
from dagster_together.storage import filesystem

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

# Every module of the package logs as ``dagster_together.results``: the name users configure.
logger = logging.getLogger("dagster_together.results")


_SPILL_BYTES = 6 * 1024 * 1024  # extracted rows gathered before they are spilled


@dataclass(frozen=True)
class JoinSummary:
    """What :func:`join_results` wrote. JSON-able with :meth:`to_dict`.

    Attributes:
        destination: the Parquet location written.
        n_inputs: number of input requests.
        n_rows: rows written (always ``n_inputs``).
        counts: rows per status, every status in :data:`STATUSES` present (``invalid_output``
            only when the join had an ``output_schema``).
        unknown_ids: output/error lines whose ``custom_id`` is not an input (ignored).
        duplicate_ids: output/error lines ignored because their ``custom_id`` already had a result
            earlier (output files first, in the order given, then error files; first one wins).
        malformed_lines: ``(location, line number, reason)`` of lines that are not results, the
            first 100.
        n_malformed_lines: how many there were in all.
        tokens_by_model: ``{model: {prompt_tokens, completion_tokens, total_tokens}}`` over the
            rows written (the response's model; ``"unknown"`` when it has none).
        unknown_id_examples: up to 100 of the unknown ids.
        duplicate_id_examples: up to 100 of the duplicated ids.
        columns: ``(name, Arrow type)`` of every column written.
        preview_rows: the first rows (``custom_id``, ``status``, prompt and content shortened,
            ``error``).
        batch_status: the batch status the statuses were decided with.
        output_columns: with an ``output_schema``, the columns its fields were written as, in
            the schema's order.
    """

    destination: str
    n_inputs: int
    n_rows: int
    counts: dict[str, int]
    unknown_ids: int = 0
    duplicate_ids: int = 0
    malformed_lines: tuple[tuple[str, int, str], ...] = ()
    n_malformed_lines: int = 0
    tokens_by_model: dict[str, dict[str, int]] = field(default_factory=dict)
    unknown_id_examples: tuple[str, ...] = ()
    duplicate_id_examples: tuple[str, ...] = ()
    columns: tuple[tuple[str, str], ...] = ()
    preview_rows: tuple[dict[str, Any], ...] = ()
    batch_status: str | None = None
    output_columns: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """Every input has exactly one row and no output line was unknown, duplicate or malformed."""
        return (
            self.n_rows == self.n_inputs
            and not self.unknown_ids
            and not self.duplicate_ids
            and not self.n_malformed_lines
        )

    @property
    def error_rate(self) -> float:
        """Share of rows that did not succeed (0.0 for no rows); ``invalid_output`` rows count."""
        return 1.0 - self.counts.get("succeeded", 0) / self.n_rows if self.n_rows else 0.0

    @property
    def invalid_output_rate(self) -> float:
        """Share of answered rows (``succeeded`` + ``invalid_output``) whose answer did not match
        the output schema (0.0 without any)."""
        invalid = self.counts.get("invalid_output", 0)
        answered = self.counts.get("succeeded", 0) + invalid
        return invalid / answered if answered else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field (tuples become lists)."""
        return json.loads(json.dumps(asdict(self), default=str))

    def preview(self, n: int = 5) -> str:
        """The first ``n`` rows as a small Markdown table."""
        rows = self.preview_rows[:n]
        if not rows:
            return "_no rows_"
        names = list(rows[0])
        lines = ["| " + " | ".join(names) + " |", "|" + " --- |" * len(names)]
        for row in rows:
            cells = ("" if row[k] is None else str(row[k]) for k in names)
            lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
        return "\n".join(lines)


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def join_results(
    *,
    inputs: Any,
    outputs: Locations,
    destination: str | os.PathLike[str],
    errors: Locations = None,
    storage_options: Mapping[str, Any] | None = None,
    batch_status: str | None = None,
    input_columns: Any = None,
    strict: bool = False,
    output_schema: Any = None,
    raw_responses: str = "failed",
) -> JoinSummary:
    """Write one Parquet row per input ``custom_id`` with its result, and summarise.

    Args:
        inputs: the batch input JSONL (a location, or a list of them read in order), or a table of
            ``custom_id`` plus the user's columns: a Parquet location, a pyarrow Table or a pandas
            DataFrame. It decides the rows and their order. From a request JSONL the input columns
            are ``request_model`` and ``prompt`` (the last user message, or the completions
            prompt); from a table, the table's own columns. The submit writes each batch's
            ``request_rows.parquet`` (:func:`~dagster_together.results.inputs.request_rows_table`):
            the same columns as its request JSONL plus the user's, with no JSON to parse. One
            Parquet file is read a row group at a time, never whole.
        outputs: output JSONL location(s); None or empty when the batch produced none.
        destination: the Parquet file to write (a path or URL ending in ``/`` gets
            ``results.parquet`` inside it).
        errors: error JSONL location(s), or None.
        storage_options: passed to fsspec for every URL.
        batch_status: the batch's final status. Inputs without any result get ``expired`` for
            ``EXPIRED``, ``cancelled`` for ``CANCELLED``, otherwise ``missing``.
        input_columns: more of the user's columns keyed by ``custom_id`` (a Parquet location or a
            table, e.g. from :func:`dagster_together.requests.write_input_columns`), added after
            the inputs' own columns; its ids that are not inputs are ignored. Held in memory.
        strict: raise :class:`MalformedResultError` on the first malformed output/error line
            instead of recording it in the summary (the default records and logs each one).
        output_schema: a JSON Schema dict, a Pydantic model class or an
            :class:`~dagster_together.output_schema.OutputSchema` (e.g. the template's
            ``RequestTemplate.schema``). Each succeeded answer's content is parsed as JSON (a
            Markdown code fence around the whole answer is allowed) and checked; its fields
            become typed columns after the result columns, under their own names, or
            ``output_<name>`` where an input or result column has the name (see
            :attr:`JoinSummary.output_columns`). An answer that is not JSON or does not match
            gets ``status="invalid_output"``, keeps its text in ``content``, the reason in
            ``error`` and ``invalid_json`` or ``schema_mismatch`` in ``error_code``; the join
            never fails for it.
        raw_responses: which rows keep their raw output or error line in ``response``:
            ``"failed"`` (the default: the rows that did not succeed, where the line is the
            evidence), ``"all"`` (also every answer's, e.g. for fields such as ``logprobs``
            that have no column; it about doubles the file and the join's work), or ``"none"``.

    Returns:
        A JoinSummary. Columns: ``custom_id``, the input columns, then :data:`RESULT_COLUMNS`:
        ``status`` (one of :data:`STATUSES`), ``content`` (``choices[0].message.content``, or
        ``choices[0].text``), ``finish_reason``, the three token counts, ``model`` (the
        response's), ``error`` and ``error_code`` (from the error line, or from a non-2xx
        ``status_code`` in an output line), and ``response`` (the raw output or error line, as
        ``raw_responses`` says; null otherwise).

    Raises:
        InvalidRequestFileError: the inputs are unreadable, or hold a duplicate or missing id.
        MalformedResultError: with ``strict=True``, for the first malformed line.
    """

    if raw_responses not in RAW_RESPONSES:
        raise ValueError(
            f"raw_responses must be one of {', '.join(map(repr, RAW_RESPONSES))}, "
            f"got {raw_responses!r}."
        )
    schema = _compile_schema(output_schema)
    destination = str(os.fspath(destination))
    if destination.endswith("/") or os.path.isdir(destination):
        destination = destination.rstrip("/") + "/results.parquet"
    opts = dict(storage_options or {})
    default_status = {"EXPIRED": "expired", "CANCELLED": "cancelled"}.get(
        str(batch_status or "").upper(), "missing"
    )
    # Spill files (about the size of the outputs) go to the system temporary directory
    # (TMPDIR); they are removed whatever happens.
    spill_dir = tempfile.mkdtemp(prefix="dagster-together-join-")
    buckets = None
    report = _Report(strict)
    # Output files first, then error files: the first result seen for an id wins. Their
    # reading starts now, beside the inputs'.
    results = _read_results(_as_list(outputs) + _as_list(errors), opts, report, raw_responses)
    try:
        ins = _read_inputs(inputs, opts, spill_dir)
        if input_columns is not None:
            ins.add_columns(input_columns, opts)
        give_back_memory()
        buckets = _Buckets(ins.n, _result_bytes(outputs, errors, opts), spill_dir)
        # Rows are spilled a few blocks at a time: each spill writes one segment per bucket it
        # touches, so bigger spills mean fewer, larger writes.
        held: list[pa.Table] = []
        held_bytes = 0
        watch = ArrowMemoryWatch()
        for k, tables in enumerate(results, start=1):
            held.extend(tables)
            held_bytes += sum(t.nbytes for t in tables)
            if held_bytes >= _SPILL_BYTES:
                buckets.add(_concat(held), ins, report)
                held, held_bytes = [], 0
            if k % blocks._TRIM_EVERY == 0:
                give_back_memory()
            else:
                watch.check()
        if held:
            buckets.add(_concat(held), ins, report)
        del held
        buckets.close_writers()
        ins.forget_ids()  # the lookups are done: the biggest per-input structure can go
        give_back_memory()
        fields = _assemble(ins, buckets, destination, opts, default_status, report, schema)
    finally:
        results.close()
        if buckets is not None:
            buckets.close()
        shutil.rmtree(spill_dir, ignore_errors=True)
        give_back_memory()
    summary = JoinSummary(**{**fields, "batch_status": batch_status})
    logger.info(
        "Joined %s inputs into %s: %s; %s unknown, %s duplicate, %s malformed lines",
        summary.n_inputs,
        destination,
        ", ".join(f"{k} {v}" for k, v in summary.counts.items() if v),
        summary.unknown_ids,
        summary.duplicate_ids,
        summary.n_malformed_lines,
    )
    return summary


def _compile_schema(output_schema: Any) -> Any:
    if output_schema is None:
        return None
    from dagster_together.output_schema import OutputSchema

    if isinstance(output_schema, OutputSchema):
        return output_schema
    return OutputSchema(output_schema)


def _concat(tables: list[pa.Table]) -> pa.Table:
    import pyarrow as pa

    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def _result_bytes(outputs: Locations, errors: Locations, opts: dict[str, Any]) -> int:
    total = 0
    for location in _as_list(outputs) + _as_list(errors):
        fs, path = filesystem(location, opts)
        try:
            total += int(fs.size(path) or 0)
        except (OSError, TypeError):
            pass  # a missing file is reported when it is read
    return total
