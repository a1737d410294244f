"""join_results: wall time beside a plain pyarrow pass, peak RSS and its flatness, and the
hand-written pandas way.

Child tasks (``task_*``) run in fresh processes via :func:`bench.measure.run_task`. Each first
runs once over a tiny batch (``warmup``), so that lazy imports and first-call setup stay out of
the clock on both sides; peak RSS is the whole process's, imports and warm-up included.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from bench import data
from bench.context import Context
from bench.measure import peak_rss, rss, run_task, timed
from bench.report import Row, megabytes, seconds, times

__all__ = ["FIGURES"]

# The reference reads in 16 MiB blocks: pyarrow's default (1 MiB) is slower on these files.
REFERENCE_BLOCK_SIZE = 16 * 1024 * 1024
WARMUP_N = 1_000


# -- child tasks ---------------------------------------------------------------------------------
def _timed_write(write: Callable[[], Any], destination: str) -> tuple[Any, dict[str, Any]]:
    """``write()`` on the clock (warm-up done by the caller): its result and the measurements,
    the Parquet file at ``destination`` measured and removed."""
    before = rss()
    with timed() as t:
        result = write()
    size = os.path.getsize(destination)
    os.remove(destination)
    return result, {
        "seconds": t["seconds"],
        "cpu_seconds": t["cpu_seconds"],
        "rss_before": before,
        "peak_rss": peak_rss(),
        "parquet_bytes": size,
    }


def task_join(
    inputs: str, outputs: str, errors: str, destination: str, warmup: dict[str, str]
) -> dict[str, Any]:
    """``join_results`` over the generated batch."""
    from dagster_together.results import join_results

    join_results(**warmup, destination=destination)
    summary, measured = _timed_write(
        lambda: join_results(
            inputs=inputs, outputs=outputs, errors=errors, destination=destination
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


def task_pyarrow_pass(outputs: str, destination: str, warmup: dict[str, str]) -> dict[str, Any]:
    """The reference: pyarrow's streaming JSON reader into a ParquetWriter, nothing else."""
    _pyarrow_pass(warmup["outputs"], destination)
    rows, measured = _timed_write(lambda: _pyarrow_pass(outputs, destination), destination)
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
def _join_args(ctx: Context, n: int) -> dict[str, Any]:
    batch, tiny = data.join_data(n), data.join_data(WARMUP_N)
    return {
        "inputs": str(batch.inputs),
        "outputs": str(batch.outputs),
        "errors": str(batch.errors),
        "destination": str(ctx.path(f"join-{n}.parquet")),
        "warmup": {
            "inputs": str(tiny.inputs),
            "outputs": str(tiny.outputs),
            "errors": str(tiny.errors),
        },
    }


def _main_runs(ctx: Context) -> dict[str, list[dict[str, Any]]]:
    """Ours and the reference on ``join_n`` requests, alternated, ``repeats`` times each."""

    def compute() -> dict[str, list[dict[str, Any]]]:
        n = ctx.sizes.join_n
        args = _join_args(ctx, n)
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "reference": []}
        for _ in range(ctx.sizes.repeats):
            runs["ours"].append(run_task(task_join, **args))
            runs["reference"].append(
                run_task(
                    task_pyarrow_pass,
                    outputs=args["outputs"],
                    destination=str(ctx.path("reference.parquet")),
                    warmup=args["warmup"],
                )
            )
        return runs

    result: dict[str, list[dict[str, Any]]] = ctx.memo("join-main", compute)
    return result


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return min(runs, key=lambda r: float(r["seconds"]))


# -- figures -------------------------------------------------------------------------------------
def join_wall(ctx: Context) -> list[Row]:
    """join_results wall time vs a plain pyarrow streaming JSONL -> Parquet pass."""
    n = ctx.sizes.join_n
    runs = _main_runs(ctx)
    ours, ref = _best(runs["ours"]), _best(runs["reference"])
    ratio = ours["seconds"] / ref["seconds"]
    mb = data.join_data(n).output_bytes
    return [
        Row(
            name="join_wall",
            figure=f"join_results wall time, {n:,} requests ({mb / 1e6:.0f} MB output)",
            ours=seconds(ours["seconds"]),
            reference=f"{seconds(ref['seconds'])} (pyarrow JSONL->Parquet pass)",
            ratio=times(ratio),
            target="<= 2.0x",
            passed=ratio <= 2.0 and bool(ours["complete"]),
            values={
                "ours_seconds": [r["seconds"] for r in runs["ours"]],
                "reference_seconds": [r["seconds"] for r in runs["reference"]],
                "ours_cpu_seconds": [r["cpu_seconds"] for r in runs["ours"]],
                "reference_cpu_seconds": [r["cpu_seconds"] for r in runs["reference"]],
                "ours_counts": ours["counts"],
                "ours_parquet_bytes": ours["parquet_bytes"],
                "reference_parquet_bytes": ref["parquet_bytes"],
                "output_bytes": mb,
                "ratio": ratio,
            },
        )
    ]


def join_rss(ctx: Context) -> list[Row]:
    """join_results peak RSS at ``join_n``, and its flatness over ``flat_ns``."""
    main = ctx.sizes.join_n
    peaks: dict[int, int] = {}
    for n in ctx.sizes.flat_ns:
        if n == main:
            peaks[n] = max(int(r["peak_rss"]) for r in _main_runs(ctx)["ours"])
        else:  # the worst of a few runs, as for the main size (RSS varies with thread timing)
            runs = max(1, ctx.sizes.repeats_long - 1)
            peaks[n] = max(
                int(run_task(task_join, **_join_args(ctx, n))["peak_rss"]) for _ in range(runs)
            )
    at_main = peaks.get(main) or max(int(r["peak_rss"]) for r in _main_runs(ctx)["ours"])
    spread = max(peaks.values()) / min(peaks.values())
    lo, hi = min(ctx.sizes.flat_ns), max(ctx.sizes.flat_ns)
    return [
        Row(
            name="join_rss",
            figure=f"join_results peak RSS, {main:,} requests",
            ours=megabytes(at_main),
            reference="-",
            ratio="-",
            target="<= 300 MB",
            passed=at_main <= 300e6,
            values={"peak_rss": at_main},
        ),
        Row(
            name="join_rss_flat",
            figure=f"join_results peak RSS, {lo:,} -> {hi:,} requests",
            ours=" / ".join(megabytes(peaks[n]) for n in sorted(peaks)),
            reference="-",
            ratio=f"{times(spread)} (max/min)",
            target="<= 1.20x, all <= 300 MB",
            passed=spread <= 1.2 and max(peaks.values()) <= 300e6,
            values={"peak_rss_by_n": {str(n): peaks[n] for n in sorted(peaks)}, "spread": spread},
        ),
    ]


def join_pandas(ctx: Context) -> list[Row]:
    """join_results vs pandas read_json + json_normalize + merge + to_parquet."""
    n = ctx.sizes.pandas_n
    if n == ctx.sizes.join_n:
        ours = _best(_main_runs(ctx)["ours"])
        ours_peak = max(int(r["peak_rss"]) for r in _main_runs(ctx)["ours"])
    else:
        ours = run_task(task_join, **_join_args(ctx, n))
        ours_peak = int(ours["peak_rss"])
    pandas = run_task(task_pandas, **_join_args(ctx, n))  # once: it is slow and deterministic
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
            ours=seconds(ours["seconds"]),
            reference=f"{seconds(pandas['seconds'])} (pandas)",
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


FIGURES = {"join_wall": join_wall, "join_rss": join_rss, "join_pandas": join_pandas}
