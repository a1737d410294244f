"""The answer store and the final table at scale: looking 1,000,000 requests up in a store of
10,000,000 answers, and assembling a 1,000,000-row final table from its 20 batches.

The lookup's reference is reading every key of the store (the store's ``key`` column, all of it,
with pyarrow): the I/O any lookup has to do at least, since the store is not indexed. The final
table's reference is reading its batches' result files and writing the same rows as one Parquet
file with pyarrow, without any join.
"""

from __future__ import annotations

import os
from typing import Any

from bench.context import Context
from bench.measure import reset_peak_rss, run_task, timed
from bench.report import Row, megabytes, seconds, times

_FILES = 20  # store files (one per batch) and batches of the final table
_MEMORY_TARGET = 300_000_000  # bytes, as the report prints them (10^6 per MB)


def _hex_keys(start: int, n: int) -> Any:
    """``n`` distinct 32-hex-digit keys, deterministic: key ``i`` for ``i`` in ``[start, start+n)``."""
    import hashlib

    import pyarrow as pa

    return pa.array(
        [hashlib.md5(str(i).encode()).hexdigest() for i in range(start, start + n)], pa.string()
    )


def _make_store(ctx: Context) -> dict[str, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dagster_together.storage import BatchStorageLayout

    root = ctx.path("cache")
    layout = BatchStorageLayout(str(root))
    n, per = ctx.sizes.cache_store_n, ctx.sizes.cache_store_n // _FILES
    for f in range(_FILES):
        keys = _hex_keys(f * per, per)
        table = pa.table(
            {
                "key": keys,
                "content": pa.array(["positive"] * per, pa.string()),
                "finish_reason": pa.array(["stop"] * per, pa.string()),
                "prompt_tokens": pa.array([40] * per, pa.int64()),
                "completion_tokens": pa.array([2] * per, pa.int64()),
                "total_tokens": pa.array([42] * per, pa.int64()),
                "model": pa.array(["m"] * per, pa.string()),
            }
        )
        target = layout.answers_parquet(f"batch-{f:03d}")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        pq.write_table(table, target)
    # The requests: half answered by the store (spread over it), half new.
    m = ctx.sizes.cache_lookup_n
    wanted = pa.concat_arrays([_hex_keys(0, m // 2), _hex_keys(n, m - m // 2)])
    keys_path = str(root / "wanted.parquet")
    pq.write_table(pa.table({"key": wanted}), keys_path)
    return {"storage_url": str(root), "keys": keys_path}


def task_lookup(storage_url: str, keys: str) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from dagster_together.answers import AnswerStore
    from dagster_together.storage import BatchStorageLayout

    wanted = pq.read_table(keys)["key"].combine_chunks()
    reset_peak_rss()
    with timed() as t:
        found = AnswerStore(BatchStorageLayout(storage_url)).lookup(wanted)
    return {**t, "found": found.num_rows}


def task_read_every_key(storage_url: str) -> dict[str, Any]:
    import pyarrow.dataset as ds

    reset_peak_rss()
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
    ours = min((run_task(task_lookup, **data) for _ in range(ctx.sizes.repeats)), key=_secs)
    ref = min(
        (
            run_task(task_read_every_key, storage_url=data["storage_url"])
            for _ in range(ctx.sizes.repeats)
        ),
        key=_secs,
    )
    n, m = ctx.sizes.cache_store_n, ctx.sizes.cache_lookup_n
    ratio = ours["seconds"] / ref["seconds"]
    values = {"ours": ours, "reference": ref}
    return [
        Row(
            name="cache_lookup",
            figure=f"answer store lookup, {m:,} requests in {n:,} answers",
            ours=f"{seconds(ours['seconds'])} ({ours['cpu_seconds']:.2f} CPU-s), {ours['found']:,} found",
            reference=f"{seconds(ref['seconds'])} ({ref['cpu_seconds']:.2f} CPU-s, read every key)",
            ratio=times(ratio),
            target="<= 3.0x, seconds not minutes",
            passed=ratio <= 3.0 and ours["found"] == m // 2,
            values=values,
        ),
        Row(
            name="cache_lookup_rss",
            figure=f"answer store lookup, {m:,} requests in {n:,} answers: peak RSS",
            ours=megabytes(ours["peak_rss"]),
            reference=megabytes(ref["peak_rss"]) + " (read every key)",
            ratio="-",
            target="<= 300 MB",
            passed=ours["peak_rss"] <= _MEMORY_TARGET,
            values=values,
        ),
    ]


def _make_submission(ctx: Context) -> dict[str, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dagster_together.storage import BatchStorageLayout
    from dagster_together.submissions import BatchRecord, Submissions

    root = ctx.path("final")
    layout = BatchStorageLayout(str(root))
    submissions = Submissions(layout)
    n = ctx.sizes.final_n
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
    from dagster_together.storage import BatchStorageLayout
    from dagster_together.submissions import assemble_final

    reset_peak_rss()
    with timed() as t:
        summary = assemble_final(BatchStorageLayout(storage_url), "sub")
    return {**t, "rows": summary.n_rows}


def task_final_reference(storage_url: str, destination: str) -> dict[str, Any]:
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    reset_peak_rss()
    with timed() as t:
        table = ds.dataset(os.path.join(storage_url, "results"), format="parquet").to_table()
        pq.write_table(table, destination)
    return {**t, "rows": table.num_rows}


def final_table(ctx: Context) -> list[Row]:
    """The final table's assembly against reading its batches and writing them as one file."""
    data = ctx.memo("final_submission", lambda: _make_submission(ctx))
    ours = min((run_task(task_final, **data) for _ in range(ctx.sizes.repeats)), key=_secs)
    ref = run_task(task_final_reference, destination=str(ctx.path("final-ref.parquet")), **data)
    n = ctx.sizes.final_n
    return [
        Row(
            name="final_table",
            figure=f"final table, {n:,} rows from {_FILES} batches: peak RSS",
            ours=f"{megabytes(ours['peak_rss'])}, {seconds(ours['seconds'])} ({ours['cpu_seconds']:.2f} CPU-s)",
            reference=f"{megabytes(ref['peak_rss'])}, {seconds(ref['seconds'])} (read + write, no join)",
            ratio=times(ours["seconds"] / ref["seconds"]),
            target="<= 300 MB",
            passed=ours["peak_rss"] <= _MEMORY_TARGET and ours["rows"] == n,
            values={"ours": ours, "reference": ref},
        )
    ]


def _secs(run: dict[str, Any]) -> float:
    return float(run["seconds"])


FIGURES = {"cache_lookup": cache_lookup, "final_table": final_table}
