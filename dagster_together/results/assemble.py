"""Assembly: each bucket's results matched to its inputs, in input order, written to Parquet.

The first result of each id wins, inputs without one get the status the batch's end decides
(one of :data:`STATUSES`), and the rows go to the Parquet file in row groups of about
``_ROW_GROUP_BYTES`` from a writer thread. The file is written under a temporary name and
published at the end, so nothing appears unless the whole join succeeded. The counts, tokens
and preview rows of the summary are gathered on the way.
"""

from __future__ import annotations

import array
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from dagster_together.arrow_values import int64s, strings
from dagster_together.memory import ArrowMemoryWatch, give_back_memory
from dagster_together.results import blocks, outputs
from dagster_together.results.arrow import (
    _first_of_runs,
    _int,
    _null,
    _range,
    _scatter,
    _str,
)
from dagster_together.results.blocks import _Prefetcher
from dagster_together.results.buckets import _Buckets
from dagster_together.results.inputs import _Inputs
from dagster_together.results.outputs import _Report, _row_schema
from dagster_together.storage import open_pending

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from dagster_together.output_schema import OutputSchema


STATUSES = ("succeeded", "invalid_output", "failed", "missing", "expired", "cancelled")
"""Every status a row can have, in the order the summary lists them. ``invalid_output``: the
request succeeded but, with an ``output_schema``, its answer is not JSON or does not match."""

# Buckets are gathered into row groups of about this size (in memory; ~1 MB compressed): the
# assembly holds one group being gathered and one being encoded, the phase where the 300k join
# peaked (8 MiB: 269-276 MB, 4 MiB: 254 MB, same speed).
_ROW_GROUP_BYTES = 4 * 1024 * 1024


def _assemble(
    ins: _Inputs,
    buckets: _Buckets,
    destination: str,
    opts: dict[str, Any],
    default_status: str,
    report: _Report,
    schema: OutputSchema | None = None,
) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    # invalid_output is only possible, and only counted, with an output schema.
    counts = {s: 0 for s in STATUSES if schema is not None or s != "invalid_output"}
    tokens: dict[str, dict[str, int]] = {}
    preview: list[dict[str, Any]] = []
    # Written to a local file and published at the end: nothing appears unless the join succeeded.
    out = open_pending(destination, opts, stage_locally=True)
    assert out.local_path is not None  # always, with stage_locally
    result_schema = pa.schema(list(_row_schema())[1:])
    writer: pq.ParquetWriter | None = None
    written = None
    # Parquet encoding runs in its own thread (pyarrow releases the GIL) while the next buckets
    # are prepared. Small buckets keep the preparation light; they are gathered into row groups
    # of about _ROW_GROUP_BYTES so the file does not get tiny row groups.
    write_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dagster-together-write")
    pending = None
    gathered: list[pa.Table] = []
    gathered_bytes = 0
    output_names: list[str] | None = None  # the schema's fields as columns, once inputs are known

    def flush() -> None:
        nonlocal pending, gathered, gathered_bytes
        if not gathered:
            return
        group = pa.concat_tables(gathered)
        gathered, gathered_bytes = [], 0
        if pending is not None:
            pending.result()  # raises if the previous write failed
        assert writer is not None  # opened before the first table is gathered
        pending = write_thread.submit(writer.write_table, group, row_group_size=group.num_rows)

    def prepared() -> Iterator[tuple[pa.Table, pa.Table]]:
        """Each bucket's inputs and its results (statuses decided): made on a background
        thread, one bucket ahead of the rows being typed and written."""
        bounds = buckets.bounds(ins.n)
        watch = ArrowMemoryWatch()
        for b, ((lo, hi), inputs) in enumerate(zip(bounds, ins.slices(bounds), strict=True)):
            if b and b % blocks._TRIM_EVERY == 0:
                give_back_memory()
            else:
                watch.check()
            spilled = buckets.read(b)
            if spilled is not None:
                results = _pick(spilled, lo, hi, inputs, report)
                del spilled
            else:
                results = pa.Table.from_arrays(
                    [pa.nulls(hi - lo, t) for t in result_schema.types], schema=result_schema
                )
            status = pc.coalesce(results.column("status"), _str(default_status))
            yield inputs, results.set_column(0, "status", status)

    ahead = _Prefetcher(prepared(), depth=1)
    try:
        for inputs, results in ahead:
            # Typed here, while the next bucket is prepared: the two halves of the work overlap.
            fields: list[Any] = []
            if schema is not None:
                results, fields = _structured(results, schema)
            if schema is not None and output_names is None:
                output_names = _output_names(
                    schema.field_names, inputs.column_names + results.column_names
                )
            for item in pc.value_counts(results.column("status")):
                counts[item["values"].as_py()] += item["counts"].as_py()
            _add_tokens(tokens, results)
            table = pa.Table.from_arrays(
                inputs.columns + results.columns + fields,
                names=inputs.column_names + results.column_names + list(output_names or ()),
            )
            del results, inputs, fields
            if writer is None:
                written = table.schema
                writer = pq.ParquetWriter(out.local_path, written, **_parquet_options(written))
            if len(preview) < 5:
                preview.extend(_preview_rows(table.slice(0, 5 - len(preview))))
            gathered.append(table)
            gathered_bytes += table.nbytes
            del table
            if gathered_bytes >= _ROW_GROUP_BYTES:
                flush()
        flush()
        if pending is not None:
            pending.result()
            pending = None
        if writer is not None:
            writer.close()
            writer = None
        out.commit()
    finally:
        ahead.close()
        if pending is not None:
            pending.exception()  # wait: the file must not be closed under the writer
        write_thread.shutdown(wait=True)
        if writer is not None:
            writer.close()
        out.abort()  # nothing after the commit
    return {
        "destination": destination,
        "n_inputs": ins.n,
        "n_rows": sum(counts.values()),
        "counts": counts,
        "unknown_ids": report.unknown,
        "duplicate_ids": report.duplicates,
        "malformed_lines": tuple(report.malformed),
        "n_malformed_lines": report.n_malformed,
        "tokens_by_model": tokens,
        "unknown_id_examples": tuple(report.unknown_examples),
        "duplicate_id_examples": tuple(report.duplicate_examples),
        "columns": tuple((f.name, str(f.type)) for f in written) if written else (),
        "output_columns": tuple(output_names or ()),
        "preview_rows": tuple(preview),
    }


_TEXT_COLUMNS = {"prompt", "content", "response", "error", "tool_calls", "reasoning"}


def _parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """Dictionary encoding and min/max statistics only where they pay off.

    Long, mostly unique texts (prompts, answers, raw lines) gain nothing from either, and trying
    costs time; statuses, models, codes and counts keep both (they make filters fast). Ids keep
    statistics only: they are unique, so a dictionary would fill up and fall back to plain.
    """
    small = [f.name for f in schema if f.name not in _TEXT_COLUMNS]
    return {"use_dictionary": [n for n in small if n != "custom_id"], "write_statistics": small}


def _output_names(fields: tuple[str, ...], taken: list[str]) -> list[str]:
    """Column names of the schema's fields: their own, or ``output_<name>`` when an input or
    result column already has it (``output_output_<name>``... while it still clashes)."""
    used = set(taken)
    names = []
    for name in fields:
        while name in used:
            name = f"output_{name}"
        used.add(name)
        names.append(name)
    return names


def _structured(results: pa.Table, schema: OutputSchema) -> tuple[pa.Table, list[Any]]:
    """Parse and check the content of each succeeded row against ``schema``.

    Returns the results (rows whose answer is not JSON or does not match get
    ``invalid_output``, their ``error`` and ``error_code``; ``content`` keeps the raw text) and
    one typed array per schema field, null where there is no valid answer. pyarrow reads the
    answers it can vouch for (:mod:`.structured`); the rest go through ``schema.parse`` one by
    one, which also words the errors. Only the rows of one bucket are held at a time.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from dagster_together.output_schema import AnswerError
    from dagster_together.results.structured import _typed_answers

    n = results.num_rows
    succeeded = pc.equal(results.column("status").combine_chunks(), _str("succeeded"))
    contents = results.column("content").combine_chunks()
    accepted, fast = _typed_answers(contents, schema, among=succeeded)
    rest = pc.indices_nonzero(pc.and_(succeeded, pc.invert(accepted))).cast(pa.int64())
    names = schema.field_names
    lines: list[str] = []  # each answer Python checked, as JSON of its shaped values
    bad: list[int] = []  # positions among ``rest``
    errors: list[str | None] = []
    codes: list[str | None] = []
    parse = schema.parse
    for j, text in enumerate(contents.take(rest).to_pylist()):
        try:
            answer = parse(text)
        except AnswerError as exc:
            bad.append(j)
            errors.append(str(exc))
            codes.append(exc.code)
            lines.append("{}")
            continue
        lines.append(json.dumps({name: answer[name] for name in names}, ensure_ascii=False))
    if len(bad) == len(rest):  # Python accepted none: the fast path's values, where it accepted
        everyone = pc.all(accepted).as_py()
        fields = fast if everyone else [pc.if_else(accepted, v, _null(v.type)) for v in fast]
    else:
        # Each answer's value: the fast path's where it accepted, else Python's (after them);
        # the indices composed, so each field is taken once.
        pick = pc.if_else(accepted, _range(0, n), pc.add(_scatter(rest, 0, n), _int(n)))
        slow = _typed_lines(lines, schema)
        fields = [
            pa.concat_arrays([fast_values, slow.column(i).combine_chunks()]).take(pick)
            for i, fast_values in enumerate(fast)
        ]
    if bad:
        mask = pc.is_valid(_scatter(rest.take(int64s(array.array("q", bad))), 0, n))
        for name, new in (  # in row order, as ``mask`` marks them
            ("status", strings(["invalid_output"] * len(bad))),
            ("error", strings(errors)),
            ("error_code", strings(codes)),
        ):
            i = results.schema.get_field_index(name)
            column = pc.replace_with_mask(results.column(name).combine_chunks(), mask, new)
            results = results.set_column(i, name, column)
    return results, fields


def _typed_lines(lines: list[str], schema: OutputSchema) -> pa.Table:
    """Values already checked by Python, given as JSON lines, as the schema's typed columns.

    Read back by pyarrow's JSON reader rather than converted from Python objects: that
    conversion imports pandas when it is installed (about 50 MB of memory), which the join
    does not need.
    """
    import pyarrow as pa
    import pyarrow.json as pa_json

    arrow_schema = pa.schema(schema.arrow_fields())
    if all(line == "{}" for line in lines):  # none, or only rejected answers: all null
        return pa.Table.from_arrays(
            [pa.nulls(len(lines), t) for t in arrow_schema.types], schema=arrow_schema
        )
    data = ("\n".join(lines) + "\n").encode()
    return pa_json.read_json(
        pa.BufferReader(data),
        read_options=pa_json.ReadOptions(use_threads=False, block_size=max(len(data), 1 << 16)),
        parse_options=pa_json.ParseOptions(explicit_schema=arrow_schema),
    )


def _pick(spilled: pa.Table, lo: int, hi: int, inputs: pa.Table, report: _Report) -> pa.Table:
    """The result row of each input in ``[lo, hi)`` (first occurrence wins), nulls for none.

    Only the small ``idx`` column is sorted; the wide rows are copied once, by one ``take``.
    """
    import pyarrow.compute as pc

    idx = spilled.column("idx").combine_chunks()
    order = pc.sort_indices(idx)  # stable: among equal ids, the first read stays first
    idx = idx.take(order)
    first = _first_of_runs(idx)
    if not pc.all(first).as_py():
        later = pc.invert(first)
        dup_positions = pc.subtract(idx.filter(later), _int(lo))
        report.duplicate_ids(
            len(dup_positions),
            inputs.column("custom_id")
            .take(dup_positions.slice(0, outputs._MAX_RECORDED))
            .to_pylist(),
        )
        order, idx = order.filter(first), idx.filter(first)
    return spilled.drop_columns(["idx"]).take(order.take(_scatter(idx, lo, hi)))


def _add_tokens(tokens: dict[str, dict[str, int]], rows: pa.Table) -> None:
    """Add the token counts of ``rows`` to ``tokens``, by model (``unknown`` without one)."""
    import pyarrow.compute as pc

    names = ("prompt_tokens", "completion_tokens", "total_tokens")
    rows = rows.select([*names, "model"])  # never copy the wide columns
    counted = pc.is_valid(pc.coalesce(*(rows.column(n) for n in names)))
    if not pc.any(counted).as_py():
        return
    rows = rows.filter(counted)
    models = pc.coalesce(rows.column("model"), _str("unknown"))
    for model in pc.unique(models).to_pylist():
        subset = rows.filter(pc.equal(models, _str(model))) if model else rows
        totals = tokens.setdefault(model, dict.fromkeys(names, 0))
        for n in names:
            totals[n] += pc.sum(subset.column(n)).as_py() or 0


def _preview_rows(table: pa.Table) -> list[dict[str, Any]]:
    wanted = ("custom_id", "status", "prompt", "content", "error")
    rows = table.select([c for c in wanted if c in table.column_names]).to_pylist()
    for row in rows:
        for key in ("prompt", "content", "error"):
            if isinstance(row.get(key), str) and len(row[key]) > 80:
                row[key] = row[key][:77] + "..."
    return rows
