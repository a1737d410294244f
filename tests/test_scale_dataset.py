"""Many batches from one submit read back as one table: 20,000 prompts cut into 20 batches, run
through the submit asset, the sensor and the results runs over real HTTP against the emulator,
then read by DuckDB and by ``pyarrow.dataset`` as one hive-partitioned dataset with exactly one
row per prompt (the full size, 1,000,000 prompts, is a benchmark figure: ``bench/figures_scale``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from dagster_together.emulator import Emulator
from dagster_together.submissions import Submissions
from tests.helpers import SensorPipeline

# 20 results runs (one per batch) take a few seconds: Dagster's fixed cost per run.
pytestmark = pytest.mark.slow

N = 20_000
PER_BATCH = 1_000


def _prompts() -> pa.Table:
    return pa.table(
        {"id": [f"p{i:05d}" for i in range(N)], "text": [f"prompt number {i}" for i in range(N)]}
    )


class Driver(SensorPipeline):
    """The sensor ticked and its results runs executed in process, as the daemon would."""

    def collect_all(self) -> int:
        job = self.defs.resolve_job_def("docs_results_job")
        tick = self.evaluate_sensor()
        assert isinstance(tick, dg.SensorResult)
        requests = tick.run_requests or []
        for request in requests:
            run = job.execute_in_process(
                instance=self.instance, partition_key=request.partition_key, tags=request.tags
            )
            assert run.success
        return len(requests)


def test_twenty_batches_read_as_one_table_by_duckdb_and_pyarrow(
    api_key: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    with Emulator(api_key=api_key, validate_seconds=0.0, run_seconds=3600) as emu:
        p = Driver(emu, api_key, instance, tmp_path / "store", _prompts(), PER_BATCH)
        batch_ids = p.submit()
        assert len(batch_ids) == N // PER_BATCH
        for batch_id in batch_ids:
            emu.set_batch_status(batch_id, "COMPLETED")
        assert p.collect_all() == len(batch_ids)
    layout = p.bundle.layout
    record = Submissions(layout).of_batch(batch_ids[0])
    assert record is not None

    # Every batch's results: one hive partition per batch, read as one table.
    results = Path(layout.results_url)
    table = ds.dataset(results, format="parquet", partitioning="hive").to_table()
    _assert_one_row_per_prompt(table.to_pydict(), set(batch_ids))
    glob = f"{results}/**/*.parquet"
    sql = f"SELECT * FROM read_parquet('{glob}', hive_partitioning = true)"
    _assert_one_row_per_prompt(_duckdb_rows(sql), set(batch_ids))

    # The submission's final table (one partition per submission) holds the same rows.
    final = Path(layout.final_url)
    sql = f"SELECT id, status, submission FROM read_parquet('{final}/**/*.parquet', hive_partitioning = true)"
    rows = _duckdb_rows(sql)
    assert sorted(rows["id"]) == [f"p{i:05d}" for i in range(N)]
    assert set(rows["submission"]) == {record.submission_id}
    assert set(rows["status"]) == {"succeeded"}


def _assert_one_row_per_prompt(rows: dict[str, list[Any]], batch_ids: set[str]) -> None:
    assert len(rows["custom_id"]) == N
    assert sorted(rows["custom_id"]) == [f"p{i:05d}" for i in range(N)]
    assert set(rows["batch_id"]) == batch_ids  # the partition column
    assert set(rows["status"]) == {"succeeded"}
    assert all(rows["content"])


def _duckdb_rows(sql: str) -> dict[str, list[Any]]:
    # pa.table takes DuckDB's answer whether it is a Table or a stream (DuckDB 2).
    return pa.table(duckdb.sql(sql).arrow()).to_pydict()
