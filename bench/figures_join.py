"""join_results: wall and CPU time beside a plain pyarrow pass (on two data shapes), with a
5-field output schema beside the plain join, peak RSS and its flatness, and the hand-written
pandas way.

Child tasks (``task_*``) run in fresh processes via :func:`bench.measure.run_task`. Each first
runs once over a tiny batch (``warmup``), so that lazy imports and first-call setup stay out of
the clock on both sides; peak RSS is the whole process's, imports and warm-up included. CPU
seconds are the child's own (``getrusage``: user + system of every thread) over the timed call;
``process_cpu_seconds`` also counts its imports and warm-up.

The main join rows measure the join as the results asset calls it: ``inputs=`` the submit's
``request_rows.parquet`` (written beside the cached data, off the clock, as the submit writes
it: ``request_rows_table`` in row groups of ``ROW_GROUP_ROWS``); the join given the request JSONL instead (an older submission, or a
request file downloaded from Together) is an information row.

Fairness: both sides write Parquet with pyarrow's default compression (snappy); the join writes
more columns (the inputs' and the extracted ones; the raw line of the rows that did not succeed,
its default) and reads the inputs too. The join keeping every raw line
(``raw_responses="all"``) is an information row.

Ratios (PAIRED): the runs of the two sides alternate, and a row's ratio is the median of the
ratios of the pairs (ours over the reference run right after it), which share the machine's
state. The best run of each side, and their ratio, are shown beside it: on this shared machine
the reference (about 1 s) now and then gets a run far below its usual, and best/best then
moves by more than the margin of the target, in either direction, from one full run to the next.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from typing import Any

from bench import data
from bench.context import Context
from bench.measure import peak_rss, rss, run_task, timed
from bench.report import Row, megabytes, paired_ratios, paired_text, seconds, times

__all__ = ["FIGURES"]

# The reference reads in 16 MiB blocks: pyarrow's default (1 MiB) is slower on these files.
REFERENCE_BLOCK_SIZE = 16 * 1024 * 1024
WARMUP_N = 1_000
WALL_TARGET = 2.0
CPU_TARGET = 2.0
SCHEMA_TARGET = 1.3  # the join with an output schema vs without, same files, same run


# -- child tasks ---------------------------------------------------------------------------------
def _timed_write(write: Callable[[], Any], destination: str) -> tuple[Any, dict[str, Any]]:
    """``write()`` on the clock (warm-up done by the caller): its result and the measurements,
    the Parquet file at ``destination`` measured and removed."""
    before = rss()
    with timed() as t:
        result = write()
    size = os.path.getsize(destination)
    os.remove(destination)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return result, {
        "seconds": t["seconds"],
        "cpu_seconds": t["cpu_seconds"],
        "process_cpu_seconds": usage.ru_utime + usage.ru_stime,
        "rss_before": before,
        "peak_rss": peak_rss(),
        "parquet_bytes": size,
    }


def task_join(
    inputs: str,
    outputs: str,
    errors: str,
    destination: str,
    warmup: dict[str, Any],
    output_schema: dict[str, Any] | None = None,
    raw_responses: str = "failed",
) -> dict[str, Any]:
    """``join_results`` over the generated batch (with ``output_schema`` when given)."""
    from dagster_together.results import join_results

    join_results(
        **warmup, destination=destination, output_schema=output_schema, raw_responses=raw_responses
    )
    summary, measured = _timed_write(
        lambda: join_results(
            inputs=inputs,
            outputs=outputs,
            errors=errors,
            destination=destination,
            output_schema=output_schema,
            raw_responses=raw_responses,
        ),
        destination,
    )
    return {
        **measured,
        "n_rows": summary.n_rows,
        "counts": summary.counts,
        "complete": summary.complete,
    }


def _pyarrow_pass(outputs: str, destination: str) -> int:
    import pyarrow.json as pa_json
    import pyarrow.parquet as pq

    rows = 0
    reader = pa_json.open_json(
        outputs, read_options=pa_json.ReadOptions(block_size=REFERENCE_BLOCK_SIZE)
    )
    with pq.ParquetWriter(destination, reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def task_pyarrow_pass(
    outputs: str, destination: str, warmup: dict[str, str], inputs: str | None = None
) -> dict[str, Any]:
    """The reference: pyarrow's streaming JSON reader into a ParquetWriter, nothing else
    (with ``inputs``, the input file is converted too, into a second file, on the clock)."""
    sources = [outputs] if inputs is None else [inputs, outputs]

    def passes() -> int:
        rows = 0
        for k, source in enumerate(sources):
            target = destination if k == len(sources) - 1 else f"{destination}.{k}"
            rows += _pyarrow_pass(source, target)
            if target != destination:
                os.remove(target)
        return rows

    _pyarrow_pass(warmup["outputs"], destination)
    if inputs is not None:
        _pyarrow_pass(warmup["inputs"], destination)
    rows, measured = _timed_write(passes, destination)
    return {**measured, "n_rows": rows}


def task_pandas(
    inputs: str, outputs: str, errors: str, destination: str, warmup: dict[str, str]
) -> dict[str, Any]:
    """The hand-written way: read_json(lines=True) + json_normalize + merge + to_parquet."""
    _pandas_join(**warmup, destination=destination)
    rows, measured = _timed_write(
        lambda: _pandas_join(inputs, outputs, errors, destination), destination
    )
    return {**measured, "n_rows": rows}


def _pandas_join(inputs: str, outputs: str, errors: str, destination: str) -> int:
    """One hand-written join; returns the rows written."""
    import pandas as pd

    requests = pd.read_json(inputs, lines=True)
    requests = pd.concat(
        [requests[["custom_id"]], pd.json_normalize(requests["body"].tolist())], axis=1
    )
    requests["prompt"] = requests["messages"].map(lambda m: m[-1]["content"])
    requests = requests.drop(columns=["messages"])
    out = pd.read_json(outputs, lines=True)
    flat = pd.json_normalize(out.to_dict(orient="records"))
    first = flat["response.body.choices"].map(lambda c: c[0])
    flat["content"] = first.map(lambda c: c["message"]["content"])
    flat["finish_reason"] = first.map(lambda c: c["finish_reason"])
    flat = flat.drop(columns=["response.body.choices"])
    err = pd.json_normalize(pd.read_json(errors, lines=True).to_dict(orient="records"))
    table = requests.merge(flat, on="custom_id", how="left").merge(err, on="custom_id", how="left")
    table.to_parquet(destination, index=False)
    return len(table)


# -- measurements shared by the figures ---------------------------------------------------------
def request_rows(batch: data.JoinData) -> str:
    """The batch's ``request_rows.parquet`` as the submit writes it (written once, beside the
    cached data): the results asset's ``inputs=``."""
    import json

    from dagster_together.requests.rows import ROW_GROUP_ROWS, RequestRows
    from dagster_together.results.inputs import request_rows_table
    from dagster_together.storage import publish_parquet

    path = batch.inputs.with_name("request_rows.parquet")
    if not path.exists():
        rows = RequestRows()
        with open(batch.inputs, "rb") as lines:
            for line in lines:
                rows.add(json.loads(line))
        publish_parquet(request_rows_table(rows.table()), str(path), row_group_size=ROW_GROUP_ROWS)
    return str(path)


def _join_args(
    ctx: Context,
    n: int,
    shape: str = "short",
    structured: bool = False,
    jsonl_inputs: bool = False,
) -> dict[str, Any]:
    """``task_join``'s arguments; inputs from the request rows, or with ``jsonl_inputs`` the
    request JSONL."""
    batch = data.join_data(n, shape=shape, structured=structured)
    tiny = data.join_data(WARMUP_N, shape=shape, structured=structured)

    def inputs(of: data.JoinData) -> str:
        return str(of.inputs) if jsonl_inputs else request_rows(of)

    return {
        "inputs": inputs(batch),
        "outputs": str(batch.outputs),
        "errors": str(batch.errors),
        "destination": str(ctx.path(f"join-{shape}-{n}.parquet")),
        "warmup": {
            "inputs": inputs(tiny),
            "outputs": str(tiny.outputs),
            "errors": str(tiny.errors),
        },
    }


def _pyarrow_runs(ctx: Context, shape: str) -> dict[str, list[dict[str, Any]]]:
    """Ours and the reference on ``join_n`` requests of ``shape``, alternated, ``repeats``
    times each."""

    def compute() -> dict[str, list[dict[str, Any]]]:
        args = _join_args(ctx, ctx.sizes.join_n, shape)
        jsonl_args = _join_args(ctx, ctx.sizes.join_n, shape, jsonl_inputs=True)
        runs: dict[str, list[dict[str, Any]]] = {
            "ours": [],
            "ours_raw_all": [],
            "ours_jsonl": [],
            "reference": [],
            "both": [],
        }
        reference = {
            "outputs": args["outputs"],
            "destination": str(ctx.path("reference.parquet")),
            "warmup": jsonl_args["warmup"],  # the request JSONL: "both" converts it too
        }
        for _ in range(ctx.sizes.repeats):
            runs["ours"].append(run_task(task_join, **args))
            runs["reference"].append(run_task(task_pyarrow_pass, **reference))
            runs["ours_jsonl"].append(run_task(task_join, **jsonl_args))
            runs["ours_raw_all"].append(run_task(task_join, **args, raw_responses="all"))
            runs["both"].append(
                run_task(task_pyarrow_pass, **reference, inputs=jsonl_args["inputs"])
            )
        return runs

    result: dict[str, list[dict[str, Any]]] = ctx.memo(f"join-pyarrow-{shape}", compute)
    return result


def _main_runs(ctx: Context) -> dict[str, list[dict[str, Any]]]:
    return _pyarrow_runs(ctx, "short")


def _best(runs: list[dict[str, Any]], key: str = "seconds") -> dict[str, Any]:
    return min(runs, key=lambda r: float(r[key]))


def _wall_cpu(run: dict[str, Any]) -> str:
    """``1.52 s (2.61 CPU-s)``."""
    return f"{seconds(run['seconds'])} ({run['cpu_seconds']:.2f} CPU-s)"


def _wall_cpu_ratios(ours: list[dict[str, Any]], reference: list[dict[str, Any]]) -> dict[str, Any]:
    """Alternated runs of two sides compared: the spread of the pairs' ratios, wall and CPU (the
    median is the row's ratio), and best/best beside it."""
    return {
        "wall_ratio_spread": paired_ratios(
            [r["seconds"] for r in ours], [r["seconds"] for r in reference]
        ),
        "cpu_ratio_spread": paired_ratios(
            [r["cpu_seconds"] for r in ours], [r["cpu_seconds"] for r in reference]
        ),
        "best_wall_ratio": _best(ours)["seconds"] / _best(reference)["seconds"],
        "best_cpu_ratio": _best(ours, "cpu_seconds")["cpu_seconds"]
        / _best(reference, "cpu_seconds")["cpu_seconds"],
    }


def _vs_pyarrow(ctx: Context, shape: str) -> list[Row]:
    """The wall and CPU rows of the join vs the pyarrow pass on ``shape`` data."""
    n = ctx.sizes.join_n
    runs = _pyarrow_runs(ctx, shape)
    batch = data.join_data(n, shape=shape)
    what = (
        f"{n:,} requests ({batch.input_bytes / 1e6:.0f} MB in, "
        f"{batch.output_bytes / 1e6:.0f} MB out{', long shape' if shape == 'long' else ''})"
    )
    # Every row's name starts with its figure's: join_wall..., join_long_...
    prefix = "join" if shape == "short" else f"join_{shape}"
    ours_wall, ref_wall = _best(runs["ours"]), _best(runs["reference"])
    ours_cpu, ref_cpu = _best(runs["ours"], "cpu_seconds"), _best(runs["reference"], "cpu_seconds")
    # The target applies to the median of the paired ratios (see PAIRED in the docstring);
    # best/best is shown beside it.
    ratios = _wall_cpu_ratios(runs["ours"], runs["reference"])
    wall_ratio = ratios["wall_ratio_spread"]["median"]
    cpu_ratio = ratios["cpu_ratio_spread"]["median"]
    pairs = len(runs["ours"])
    complete = all(bool(r["complete"]) for r in runs["ours"])
    values = {
        "ours_seconds": [r["seconds"] for r in runs["ours"]],
        "reference_seconds": [r["seconds"] for r in runs["reference"]],
        "ours_cpu_seconds": [r["cpu_seconds"] for r in runs["ours"]],
        "reference_cpu_seconds": [r["cpu_seconds"] for r in runs["reference"]],
        "ours_process_cpu_seconds": [r["process_cpu_seconds"] for r in runs["ours"]],
        "reference_process_cpu_seconds": [r["process_cpu_seconds"] for r in runs["reference"]],
        "ours_peak_rss": max(int(r["peak_rss"]) for r in runs["ours"]),
        "ours_counts": ours_wall["counts"],
        "ours_parquet_bytes": ours_wall["parquet_bytes"],
        "reference_parquet_bytes": ref_wall["parquet_bytes"],
        "input_bytes": batch.input_bytes,
        "output_bytes": batch.output_bytes,
        **ratios,
        "loadavg": list(os.getloadavg()),
    }
    reference = "(pyarrow JSONL->Parquet pass over the outputs, both snappy)"
    jsonl_cpu = _best(runs["ours_jsonl"], "cpu_seconds")
    jsonl_ratio = jsonl_cpu["cpu_seconds"] / ref_cpu["cpu_seconds"]
    both = _best(runs["both"], "cpu_seconds")
    both_ratio = jsonl_cpu["cpu_seconds"] / both["cpu_seconds"]
    asset = "as the results asset calls it (inputs: the submit's request_rows.parquet)"
    jsonl_values = {
        "ours_jsonl_seconds": [r["seconds"] for r in runs["ours_jsonl"]],
        "ours_jsonl_cpu_seconds": [r["cpu_seconds"] for r in runs["ours_jsonl"]],
        "ours_jsonl_peak_rss": max(int(r["peak_rss"]) for r in runs["ours_jsonl"]),
        "cpu_ratio_spread": paired_ratios(
            [r["cpu_seconds"] for r in runs["ours_jsonl"]],
            [r["cpu_seconds"] for r in runs["reference"]],
        ),
        "both_cpu_seconds": [r["cpu_seconds"] for r in runs["both"]],
        "both_seconds": [r["seconds"] for r in runs["both"]],
        "ratio_vs_both": both_ratio,
        "loadavg": values["loadavg"],
    }
    raw_all = _best(runs["ours_raw_all"], "cpu_seconds")
    raw_all_ratio = raw_all["cpu_seconds"] / ref_cpu["cpu_seconds"]
    return [
        Row(
            name=f"{prefix}_wall",
            figure=f"join_results wall time {asset}, {what}",
            ours=_wall_cpu(ours_wall),
            reference=f"{_wall_cpu(ref_wall)} {reference}",
            ratio=paired_text(wall_ratio, ratios["best_wall_ratio"], pairs),
            target=f"<= {WALL_TARGET}x",
            passed=wall_ratio <= WALL_TARGET and complete,
            values={**values, "ratio": wall_ratio},
        ),
        Row(
            name=f"{prefix}_cpu",
            figure=f"join_results CPU time {asset}, {what}",
            ours=_wall_cpu(ours_cpu),
            reference=f"{_wall_cpu(ref_cpu)} {reference}",
            ratio=paired_text(cpu_ratio, ratios["best_cpu_ratio"], pairs),
            target=f"<= {CPU_TARGET}x",
            passed=cpu_ratio <= CPU_TARGET and complete,
            values={**values, "ratio": cpu_ratio},
        ),
        Row(
            name=f"{prefix}_cpu_jsonl_inputs",
            figure=(
                f"join_results CPU time with inputs= the request JSONL (older submissions, "
                f"a request file from Together), {what}"
            ),
            ours=_wall_cpu(jsonl_cpu),
            reference=(
                f"{_wall_cpu(ref_cpu)} {reference}; "
                f"{_wall_cpu(both)} over inputs + outputs: {times(both_ratio)}"
            ),
            ratio=times(jsonl_ratio),
            target="none (info: the request JSON parsed as well)",
            passed=all(bool(r["complete"]) for r in runs["ours_jsonl"]),
            values={**jsonl_values, "ratio": jsonl_ratio},
        ),
        Row(
            name=f"{prefix}_cpu_raw_all",
            figure=(
                f"join_results CPU time keeping every answer's raw line "
                f"(raw_responses='all'), {what}"
            ),
            ours=_wall_cpu(raw_all),
            reference=f"{_wall_cpu(ref_cpu)} {reference}",
            ratio=times(raw_all_ratio),
            target="none (info: the raw lines copied, spilled and written too)",
            passed=all(bool(r["complete"]) for r in runs["ours_raw_all"]),
            values={
                "ours_raw_all_seconds": [r["seconds"] for r in runs["ours_raw_all"]],
                "ours_raw_all_cpu_seconds": [r["cpu_seconds"] for r in runs["ours_raw_all"]],
                "ours_raw_all_peak_rss": max(int(r["peak_rss"]) for r in runs["ours_raw_all"]),
                "ours_raw_all_parquet_bytes": raw_all["parquet_bytes"],
                "ratio": raw_all_ratio,
            },
        ),
    ]


# -- figures -------------------------------------------------------------------------------------
def join_wall(ctx: Context) -> list[Row]:
    """join_results wall and CPU time vs a plain pyarrow streaming JSONL -> Parquet pass."""
    return _vs_pyarrow(ctx, "short")


def join_long(ctx: Context) -> list[Row]:
    """The same two rows on the second data shape (long documents in, long answers out)."""
    return _vs_pyarrow(ctx, "long")


def _peaks(ctx: Context, at_main: list[dict[str, Any]], structured: bool = False) -> dict[int, int]:
    """Peak RSS of the join at each of ``flat_ns`` (``at_main``: the runs at ``join_n``): the
    worst of as many runs at each size as at ``join_n``, as RSS varies with thread timing (with
    fewer runs at one size, a lucky low peak there would decide the spread)."""
    peaks: dict[int, int] = {}
    schema = data.REVIEW_SCHEMA if structured else None
    for n in ctx.sizes.flat_ns:
        if n == ctx.sizes.join_n:
            peaks[n] = max(int(r["peak_rss"]) for r in at_main)
        else:
            args = _join_args(ctx, n, structured=structured)
            runs = len(at_main)
            peaks[n] = max(
                int(run_task(task_join, **args, output_schema=schema)["peak_rss"])
                for _ in range(runs)
            )
    return peaks


def _rss_rows(name: str, what: str, at_main: int, peaks: dict[int, int]) -> list[Row]:
    spread = max(peaks.values()) / min(peaks.values())
    lo, hi = min(peaks), max(peaks)
    return [
        Row(
            name=name,
            figure=f"{what} peak RSS, {ctx_n(peaks, at_main)}",
            ours=megabytes(at_main),
            reference="-",
            ratio="-",
            target="<= 300 MB",
            passed=at_main <= 300e6,
            values={"peak_rss": at_main},
        ),
        Row(
            name=f"{name}_flat",
            figure=f"{what} peak RSS, {lo:,} -> {hi:,} requests",
            ours=" / ".join(megabytes(peaks[n]) for n in sorted(peaks)),
            reference="-",
            ratio=f"{times(spread)} (max/min)",
            target="<= 1.20x, all <= 300 MB",
            passed=spread <= 1.2 and max(peaks.values()) <= 300e6,
            values={"peak_rss_by_n": {str(n): peaks[n] for n in sorted(peaks)}, "spread": spread},
        ),
    ]


def ctx_n(peaks: dict[int, int], at_main: int) -> str:
    """``300,000 requests``: the size whose peak is ``at_main``."""
    n = next((k for k, v in sorted(peaks.items()) if v == at_main), max(peaks))
    return f"{n:,} requests"


def join_rss(ctx: Context) -> list[Row]:
    """join_results peak RSS at ``join_n``, and its flatness over ``flat_ns``."""
    at_main = _main_runs(ctx)["ours"]
    peaks = _peaks(ctx, at_main)
    return _rss_rows("join_rss", "join_results", max(int(r["peak_rss"]) for r in at_main), peaks)


def join_schema(ctx: Context) -> list[Row]:
    """join_results with a 5-field output schema vs without it, on the same structured batch
    (schema-shaped JSON answers, ~1% invalid), alternated; and its peak RSS and flatness."""
    n = ctx.sizes.join_n
    args = _join_args(ctx, n, structured=True)
    plain: list[dict[str, Any]] = []
    typed: list[dict[str, Any]] = []
    for _ in range(ctx.sizes.repeats):
        typed.append(run_task(task_join, **args, output_schema=data.REVIEW_SCHEMA))
        plain.append(run_task(task_join, **args))
    ours, ref = _best(typed), _best(plain)
    ratios = _wall_cpu_ratios(typed, plain)
    wall_ratio = ratios["wall_ratio_spread"]["median"]
    cpu_ratio = ratios["cpu_ratio_spread"]["median"]
    counts = ours["counts"]
    typed_ok = counts.get("invalid_output", 0) > 0 and all(bool(r["complete"]) for r in typed)
    at_main = max(int(r["peak_rss"]) for r in typed)
    batch = data.join_data(n, structured=True)
    row = Row(
        name="join_schema",
        figure=(
            f"join_results with a 5-field output_schema, {n:,} requests "
            f"({batch.output_bytes / 1e6:.0f} MB out): wall (CPU)"
        ),
        ours=_wall_cpu(ours),
        reference=f"{_wall_cpu(ref)} (the same join without the schema, same files)",
        ratio=(
            f"{paired_text(wall_ratio, ratios['best_wall_ratio'], len(typed))}; CPU "
            f"{paired_text(cpu_ratio, ratios['best_cpu_ratio'], len(typed))}"
        ),
        target=f"<= {SCHEMA_TARGET}x (wall and CPU)",
        passed=wall_ratio <= SCHEMA_TARGET and cpu_ratio <= SCHEMA_TARGET and typed_ok,
        values={
            "ours_seconds": [r["seconds"] for r in typed],
            "plain_seconds": [r["seconds"] for r in plain],
            "ours_cpu_seconds": [r["cpu_seconds"] for r in typed],
            "plain_cpu_seconds": [r["cpu_seconds"] for r in plain],
            "wall_ratio": wall_ratio,
            "cpu_ratio": cpu_ratio,
            **ratios,
            "counts": counts,
            "plain_peak_rss": max(int(r["peak_rss"]) for r in plain),
            "loadavg": list(os.getloadavg()),
        },
    )
    peaks = _peaks(ctx, typed, structured=True)
    return [row, *_rss_rows("join_schema_rss", "join_results with a schema", at_main, peaks)]


def join_pandas(ctx: Context) -> list[Row]:
    """join_results vs pandas read_json + json_normalize + merge + to_parquet."""
    n = ctx.sizes.pandas_n
    if n == ctx.sizes.join_n:
        ours = _best(_main_runs(ctx)["ours"])
        ours_peak = max(int(r["peak_rss"]) for r in _main_runs(ctx)["ours"])
    else:
        ours = run_task(task_join, **_join_args(ctx, n))
        ours_peak = int(ours["peak_rss"])
    pandas = run_task(
        task_pandas, **_join_args(ctx, n, jsonl_inputs=True)
    )  # once: it is slow and deterministic
    speed = pandas["seconds"] / ours["seconds"]
    memory = pandas["peak_rss"] / ours_peak
    values = {
        "ours_seconds": ours["seconds"],
        "pandas_seconds": pandas["seconds"],
        "ours_peak_rss": ours_peak,
        "pandas_peak_rss": pandas["peak_rss"],
        "pandas_rows": pandas["n_rows"],
    }
    return [
        Row(
            name="join_pandas_speed",
            figure=f"join_results vs pandas, {n:,} requests: speed",
            ours=_wall_cpu(ours),
            reference=f"{_wall_cpu(pandas)} (pandas)",
            ratio=f"{speed:.1f}x faster",
            target=">= 10x faster",
            passed=speed >= 10,
            values=values,
        ),
        Row(
            name="join_pandas_memory",
            figure=f"join_results vs pandas, {n:,} requests: peak RSS",
            ours=megabytes(ours_peak),
            reference=f"{megabytes(pandas['peak_rss'])} (pandas)",
            ratio=f"{memory:.1f}x less",
            target=">= 5x less memory",
            passed=memory >= 5,
            values=values,
        ),
    ]


FIGURES = {
    "join_wall": join_wall,
    "join_rss": join_rss,
    "join_pandas": join_pandas,
    "join_schema": join_schema,
    "join_long": join_long,
}
