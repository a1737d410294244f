"""The answer store and the final table at scale: looking 1,000,000 requests up in a store of
10,000,000 answers, and assembling a 1,000,000-row final table from its 20 batches.

The lookup's reference is pyarrow reading every key of the store (the ``key`` column of every
file, threaded, all at once): with the wanted keys spread over the whole key space (they are
hashes), every file and row group holds some, so no layout lets a lookup read less, and this is
the floor of any lookup without an index. The lookup reads the same bytes a slice at a time on
one thread (so that its memory stays flat) and matches them; its CPU seconds beside the
reference's say what the matching costs, its wall seconds what streaming costs too.

The final table's reference is pyarrow reading the same columns the final table is made of (the
inputs' own, every batch's answers) and writing them side by side as one Parquet file: the I/O
and encoding any assembly does, without finding any row's place. Its memory is every row at
once; ours is a window of rows, and its flatness from ``final_flat_n`` to ``final_n`` rows is a
row of its own.

Peak RSS is the task's own: memory the setup left freed in pyarrow's pool (reading the wanted
keys) is given back before the measure starts, and the modules every task uses are imported
before it.
"""

from __future__ import annotations

import os
import statistics
from typing import Any

from bench.context import Context
from bench.measure import reset_peak_rss, run_task, timed
from bench.report import Row, megabytes, seconds, times

_FILES = 20  # store files (one per batch) and batches of the final table
_MEMORY_TARGET = 300_000_000  # bytes, as the report prints them (10^6 per MB)
_FLATNESS_TARGET = 1.2


def _hex_keys(start: int, n: int, step: int = 1) -> Any:
    """``n`` distinct 32-hex-digit keys, deterministic: key ``i`` for ``i`` in
    ``range(start, start + n * step, step)``."""
    import hashlib

    import pyarrow as pa

    return pa.array(
        [hashlib.md5(str(i).encode()).hexdigest() for i in range(start, start + n * step, step)],
        pa.string(),
    )


def _baseline() -> None:
    """Import what every task uses and give back what the setup freed, then start measuring."""
    import numpy  # noqa: F401
    import pyarrow as pa
    import pyarrow.compute
    import pyarrow.dataset
    import pyarrow.parquet  # noqa: F401

    import dagster_together  # noqa: F401

    pa.default_memory_pool().release_unused()
    reset_peak_rss()


def _make_store(ctx: Context) -> dict[str, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dagster_together.answers import AnswerStore
    from dagster_together.storage import BatchStorageLayout

    root = ctx.path("cache")
    store = AnswerStore(BatchStorageLayout(str(root)))
    n, per = ctx.sizes.cache_store_n, ctx.sizes.cache_store_n // _FILES
    for f in range(_FILES):  # written as the pipeline writes them
        ids = pa.array([f"r{i}" for i in range(per)], pa.string())
        results = pa.table(
            {
                "custom_id": ids,
                "status": pa.array(["succeeded"] * per, pa.string()),
                "content": pa.array(["positive"] * per, pa.string()),
                "finish_reason": pa.array(["stop"] * per, pa.string()),
                "prompt_tokens": pa.array([40] * per, pa.int64()),
                "completion_tokens": pa.array([2] * per, pa.int64()),
                "total_tokens": pa.array([42] * per, pa.int64()),
                "model": pa.array(["m"] * per, pa.string()),
            }
        )
        keys = pa.table({"custom_id": ids, "key": _hex_keys(f * per, per)})
        store.add(f"batch-{f:03d}", results, keys)
    # The requests: half answered by the store (every 20th answer: some in every file and row
    # group), half new.
    m = ctx.sizes.cache_lookup_n
    hits = _hex_keys(0, m // 2, step=max(1, n // (m // 2)))
    wanted = pa.concat_arrays([hits, _hex_keys(n, m - m // 2)])
    keys_path = str(root / "wanted.parquet")
    pq.write_table(pa.table({"key": wanted}), keys_path)
    return {"storage_url": str(root), "keys": keys_path}


def task_lookup(storage_url: str, keys: str) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from dagster_together.answers import AnswerStore
    from dagster_together.storage import BatchStorageLayout

    wanted = pq.read_table(keys)["key"].combine_chunks()
    _baseline()
    with timed() as t:
        found = AnswerStore(BatchStorageLayout(storage_url)).lookup(wanted)
    return {**t, "found": found.num_rows}


def task_read_every_key(storage_url: str) -> dict[str, Any]:
    import pyarrow.dataset as ds

    _baseline()
    with timed() as t:
        n = (
            ds.dataset(os.path.join(storage_url, "answers"), format="parquet")
            .to_table(columns=["key"])
            .num_rows
        )
    return {**t, "rows": n}


def cache_lookup(ctx: Context) -> list[Row]:
    """The answer store's lookup against reading every key of the store."""
    data = ctx.memo("cache_store", lambda: _make_store(ctx))
    ours_runs, ref_runs = [], []
    for _ in range(ctx.sizes.repeats):  # interleaved: both see the same load
        ours_runs.append(run_task(task_lookup, **data))
        ref_runs.append(run_task(task_read_every_key, storage_url=data["storage_url"]))
    ours, ref = _spread(ours_runs), _spread(ref_runs)
    n, m = ctx.sizes.cache_store_n, ctx.sizes.cache_lookup_n
    ratio = ours["seconds"]["min"] / ref["seconds"]["min"]
    cpu_ratio = ours["cpu_seconds"]["min"] / ref["cpu_seconds"]["min"]
    found = {int(r["found"]) for r in ours_runs}
    values = {"ours": ours, "reference": ref, "ratio": ratio, "cpu_ratio": cpu_ratio}
    return [
        Row(
            name="cache_lookup",
            figure=f"answer store lookup, {m:,} requests in {n:,} answers",
            ours=f"{_time(ours)}, {min(found):,} found",
            reference=f"{_time(ref)}: pyarrow reads every key of the store",
            ratio=f"{times(ratio)} ({times(cpu_ratio)} CPU)",
            target="<= 3.0x, seconds not minutes",
            passed=ratio <= 3.0 and found == {m // 2},
            values=values,
        ),
        Row(
            name="cache_lookup_rss",
            figure=f"answer store lookup, {m:,} requests in {n:,} answers: peak RSS",
            ours=_memory(ours),
            reference=_memory(ref) + " (every key at once)",
            ratio="-",
            target="<= 300 MB",
            passed=ours["peak_rss"]["max"] <= _MEMORY_TARGET,
            values=values,
        ),
    ]


def _make_submission(ctx: Context, n: int) -> dict[str, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dagster_together.storage import BatchStorageLayout
    from dagster_together.submissions import BatchRecord, Submissions

    root = ctx.path(f"final-{n}")
    layout = BatchStorageLayout(str(root))
    submissions = Submissions(layout)
    per = n // _FILES
    ids = pa.array([f"r{i:08d}" for i in range(n)], pa.string())
    keys = _hex_keys(0, n)
    submissions.write_inputs(
        "sub",
        pa.table(
            {
                "custom_id": ids,
                "review": pa.array([f"review text number {i} " * 4 for i in range(n)], pa.string()),
                "key": keys,
                "cached_batch_id": pa.nulls(n, pa.string()),
            }
        ),
    )
    for f in range(_FILES):
        batch_id = f"batch-{f:03d}"
        rows = ids.slice(f * per, per)
        results = pa.table(
            {
                "custom_id": rows,
                "status": pa.array(["succeeded"] * per, pa.string()),
                "content": pa.array(["a short answer of a few words"] * per, pa.string()),
                "finish_reason": pa.array(["stop"] * per, pa.string()),
                "prompt_tokens": pa.array([40] * per, pa.int64()),
                "completion_tokens": pa.array([6] * per, pa.int64()),
                "total_tokens": pa.array([46] * per, pa.int64()),
                "model": pa.array(["m"] * per, pa.string()),
                "error": pa.nulls(per, pa.string()),
                "error_code": pa.nulls(per, pa.string()),
            }
        )
        target = layout.results_parquet(batch_id)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        pq.write_table(results, target)
        submissions.record(BatchRecord("sub", batch_id, 1, None, per))
    return {"storage_url": str(root)}


def task_final(storage_url: str) -> dict[str, Any]:
    from dagster_together.final_table import assemble_final
    from dagster_together.storage import BatchStorageLayout

    _baseline()
    with timed() as t:
        summary = assemble_final(BatchStorageLayout(storage_url), "sub")
    return {**t, "rows": summary.n_rows}


def task_final_reference(storage_url: str, destination: str) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    from dagster_together.answers import ANSWER_COLUMNS

    _baseline()
    with timed() as t:
        inputs = pq.read_table(
            os.path.join(storage_url, "submissions", "sub", "inputs.parquet"),
            columns=["custom_id", "review"],
        )
        answers = ds.dataset(os.path.join(storage_url, "results"), format="parquet").to_table(
            columns=["status", *ANSWER_COLUMNS, "error", "error_code"]
        )
        table = pa.Table.from_arrays(
            [*inputs.columns, *answers.columns], names=[*inputs.column_names, *answers.column_names]
        )
        pq.write_table(table, destination)
    return {**t, "rows": table.num_rows}


def final_table(ctx: Context) -> list[Row]:
    """The final table's assembly against reading its columns and writing them as one file,
    and its peak RSS at two sizes."""
    n, small = ctx.sizes.final_n, ctx.sizes.final_flat_n
    data = ctx.memo("final_submission", lambda: _make_submission(ctx, n))
    small_data = _make_submission(ctx, small)
    ours_runs, ref_runs, small_runs = [], [], []
    for _ in range(ctx.sizes.repeats):
        ours_runs.append(run_task(task_final, **data))
        ref_runs.append(
            run_task(task_final_reference, destination=str(ctx.path("final-ref.parquet")), **data)
        )
        small_runs.append(run_task(task_final, **small_data))
    ours, ref, at_small = _spread(ours_runs), _spread(ref_runs), _spread(small_runs)
    complete = all(r["rows"] == n for r in ours_runs) and all(
        r["rows"] == small for r in small_runs
    )
    peak, small_peak = ours["peak_rss"]["max"], at_small["peak_rss"]["max"]
    spread = max(peak, small_peak) / min(peak, small_peak)
    values = {"ours": ours, "reference": ref, "small": at_small, "spread": spread}
    return [
        Row(
            name="final_table",
            figure=f"final table, {n:,} rows from {_FILES} batches: peak RSS",
            ours=f"{_memory(ours)}; {_time(ours)}",
            reference=f"{_memory(ref)}; {_time(ref)}: pyarrow reads its columns, writes one file",
            ratio=f"{times(ours['seconds']['min'] / ref['seconds']['min'])} time",
            target="<= 300 MB",
            passed=peak <= _MEMORY_TARGET and complete,
            values=values,
        ),
        Row(
            name="final_table_flat",
            figure=f"final table peak RSS, {small:,} -> {n:,} rows",
            ours=f"{megabytes(small_peak)} / {megabytes(peak)}",
            reference="-",
            ratio=f"{times(spread)} (max/min)",
            target=f"<= {_FLATNESS_TARGET:.2f}x, all <= 300 MB",
            passed=spread <= _FLATNESS_TARGET and peak <= _MEMORY_TARGET and complete,
            values=values,
        ),
    ]


def _spread(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """min / median / max of each measure over ``runs``."""
    return {
        key: {
            "min": min(float(r[key]) for r in runs),
            "median": statistics.median(float(r[key]) for r in runs),
            "max": max(float(r[key]) for r in runs),
        }
        for key in ("seconds", "cpu_seconds", "peak_rss")
    }


def _time(spread: dict[str, dict[str, float]]) -> str:
    """Best wall seconds (median, worst) and best CPU seconds."""
    wall = spread["seconds"]
    text = seconds(wall["min"])
    if wall["max"] > wall["min"]:
        text += f" (median {seconds(wall['median'])}, max {seconds(wall['max'])})"
    return text + f", {spread['cpu_seconds']['min']:.2f} CPU-s"


def _memory(spread: dict[str, dict[str, float]]) -> str:
    """The worst peak RSS (and the best, when they differ)."""
    peak = spread["peak_rss"]
    if peak["max"] - peak["min"] >= 1e6:
        return f"{megabytes(peak['max'])} (min {megabytes(peak['min'])})"
    return megabytes(peak["max"])


FIGURES = {"cache_lookup": cache_lookup, "final_table": final_table}
