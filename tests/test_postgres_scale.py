"""The production scenario on a real Postgres-backed instance: the Dagster daemon runs the batch
sensor, 50 batches end within a couple of seconds of each other, and the queued run coordinator
keeps at most ``POOL_LIMIT`` results runs in progress through the results asset's pool.

The instance is docs/scaling.md's own ``dagster.yaml`` and the pool limit is set with the
command the doc gives, so the doc cannot drift from what is tested here.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow.dataset as ds
import pytest
import yaml

from tests.helpers import CODE_LOCATION_HEADER, stop_process_group, write_dagster_project
from tests.postgres import PostgresServer
from tests.test_daemon_e2e import _daemon_log, _load_module, _start_daemon
from tests.test_postgres_instance import doc_concurrency_command, doc_dagster_yaml, use_database

pytestmark = pytest.mark.slow

N_BATCHES = 50
PER_BATCH = 2  # small batches: the scenario is about many runs, not big ones
POOL_LIMIT = 3  # what the doc's command sets, below its max_concurrent_runs
NAME = "reviews"  # the doc's pipeline: its pool is together_results_reviews
RESULTS_KEY = dg.AssetKey(f"{NAME}_results")
RESULTS_JOB = f"{NAME}_results_job"
# Generous: the 50 runs cost about 110 CPU seconds (a new Python process each): about a
# minute of 2 idle cores (estimated), 3.5 min at a load average of 9 (measured), more when busier.
WAIT_SECONDS = 900
IN_PROGRESS = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]

CODE_LOCATION = (
    CODE_LOCATION_HEADER
    + """
@dg.asset
def prompts() -> pa.Table:
    n = CONFIG["n_prompts"]
    return pa.table({{"id": [f"r-{{i:03d}}" for i in range(n)], "text": [f"Is {{i}} good?" for i in range(n)]}})


reviews = build_together_batch_defs(
    name="reviews",
    prompts=prompts,
    storage=CONFIG["storage_url"],
    template=RequestTemplate(model="test-model", prompt_column="text"),
    id_column="id",
    batching=BatchingOptions(max_requests_per_batch=CONFIG["per_batch"]),
    watch=SensorOptions(minimum_interval_seconds=1),
)
submit_job = dg.define_asset_job("submit_job", selection=[prompts.key, reviews.submit_asset.key])

defs = dg.Definitions.merge(
    reviews.defs,
    # As docs/scaling.md advises: the results run is one step, run in the run's own process.
    dg.Definitions(
        assets=[prompts], jobs=[submit_job], resources=RESOURCES, executor=dg.in_process_executor
    ),
)
"""
)


@pytest.fixture
def slow_emulator(api_key: str) -> Iterator[Any]:
    """Batches stay IN_PROGRESS until the test ends them (all within a couple of seconds)."""
    from dagster_together.emulator import Emulator

    with Emulator(api_key=api_key, validate_seconds=0.0, run_seconds=3600) as emu:
        yield emu


@pytest.fixture
def project(
    tmp_path: Path,
    slow_emulator: Any,
    api_key: str,
    postgres_server: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    use_database(postgres_server, postgres_server.create_database(), monkeypatch)
    config = yaml.safe_load(doc_dagster_yaml())
    # The doc's coordinator looks at the queue every 5 s (Dagster's default): every second
    # here, so 50 runs fit in a test. Everything else is the doc's.
    config["run_coordinator"].setdefault("config", {})["dequeue_interval_seconds"] = 1
    return write_dagster_project(
        tmp_path,
        monkeypatch,
        api_key,
        dagster_yaml=yaml.safe_dump(config),
        code_location=CODE_LOCATION,
        config={
            "n_prompts": N_BATCHES * PER_BATCH,
            "per_batch": PER_BATCH,
            "storage_url": str(tmp_path / "together"),
            "base_url": slow_emulator.base_url,
        },
        location="postgres_scale",
    )


def _max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end at the same instant as a start first)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


@pytest.mark.timeout(WAIT_SECONDS + 120)
def test_fifty_batches_ending_together_each_materialised_once_within_the_pool_limit(
    tmp_path: Path,
    project: dict[str, Any],
    slow_emulator: Any,
    record_property: Any,
) -> None:
    defs: dg.Definitions = _load_module(tmp_path / "defs.py").defs
    with dg.DagsterInstance.get() as instance:
        submit = defs.resolve_job_def("submit_job").execute_in_process(instance=instance)
        assert submit.success
        batch_ids = sorted(instance.get_dynamic_partitions(f"{NAME}_batches"))
    assert len(batch_ids) == N_BATCHES

    # The limit, set with the doc's command (the dagster CLI of this environment).
    command = doc_concurrency_command()
    assert command[4:] == [f"together_results_{NAME}", str(POOL_LIMIT)]
    dagster_cli = str(Path(sys.executable).parent / "dagster")
    subprocess.run([dagster_cli, *command[1:]], check=True, capture_output=True, timeout=60)

    slow_emulator.clear_requests()
    cpu_before = _children_cpu_seconds()
    daemon = _start_daemon(tmp_path)
    sampled_in_progress: list[int] = []
    try:
        with dg.DagsterInstance.get() as instance:
            # Let the sensor see the batches running first, as in production.
            _wait_for(lambda: _listed(slow_emulator), daemon, tmp_path, timeout=90)
            started = time.monotonic()
            for i, batch_id in enumerate(batch_ids):  # five waves over two seconds
                slow_emulator.set_batch_status(batch_id, "COMPLETED")
                if i % 10 == 9:
                    time.sleep(0.5)
            ended = time.monotonic()

            def all_materialised() -> bool:
                sampled_in_progress.append(
                    instance.get_runs_count(
                        dg.RunsFilter(job_name=RESULTS_JOB, statuses=IN_PROGRESS)
                    )
                )
                return instance.get_materialized_partitions(RESULTS_KEY) == set(batch_ids)

            def progress() -> str:
                done = len(instance.get_materialized_partitions(RESULTS_KEY))
                runs = instance.get_runs_count(dg.RunsFilter(job_name=RESULTS_JOB))
                return f"{done} of {N_BATCHES} materialised, {runs} runs, load {os.getloadavg()}"

            _wait_for(all_materialised, daemon, tmp_path, timeout=WAIT_SECONDS, progress=progress)
            wall_seconds = time.monotonic() - started
            time.sleep(3)  # three more sensor ticks: nothing may be launched again
            records = instance.get_run_records(dg.RunsFilter(job_name=RESULTS_JOB))
            materialisations = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=RESULTS_KEY), limit=10 * N_BATCHES
            ).records
    finally:
        stop_process_group(daemon)
    cpu_seconds = _children_cpu_seconds() - cpu_before

    # Each results partition materialised exactly once, by one successful run.
    assert Counter(r.partition_key for r in materialisations) == Counter(batch_ids)
    assert sorted(r.dagster_run.tags["dagster/partition"] for r in records) == batch_ids
    assert {r.dagster_run.status for r in records} == {dg.DagsterRunStatus.SUCCESS}

    # Never more than the pool's limit in progress.
    intervals = [(r.start_time, r.end_time) for r in records]
    assert all(start is not None and end is not None for start, end in intervals)
    overlap = _max_overlap(intervals)  # type: ignore[arg-type]
    run_seconds = [end - start for start, end in intervals]  # type: ignore[operator]
    assert max(sampled_in_progress) <= POOL_LIMIT
    assert overlap <= POOL_LIMIT, intervals

    # Nothing lost: the results dataset has every prompt once, answered.
    table = ds.dataset(
        str(tmp_path / "together" / "results"), format="parquet", partitioning="hive"
    ).to_table(columns=["custom_id", "status", "batch_id"])
    expected = [f"r-{i:03d}" for i in range(N_BATCHES * PER_BATCH)]
    assert sorted(table.column("custom_id").to_pylist()) == expected
    assert set(table.column("status").to_pylist()) == {"succeeded"}
    assert sorted(set(table.column("batch_id").to_pylist())) == batch_ids

    figures = {
        "runs_launched": len(records),
        "max_runs_in_progress_from_timestamps": overlap,
        "max_runs_in_progress_sampled": max(sampled_in_progress),
        "pool_limit": POOL_LIMIT,
        "seconds_for_batches_to_end": round(ended - started, 2),
        "wall_seconds_first_end_to_last_materialised": round(wall_seconds, 1),
        "mean_run_seconds": round(sum(run_seconds) / len(run_seconds), 1),
        "cpu_seconds_daemon_and_runs": round(cpu_seconds, 1),
        "load_averages": os.getloadavg(),
    }
    for key, value in figures.items():
        record_property(key, value)
    print(f"\npostgres scale scenario: {figures}")


def _children_cpu_seconds() -> float:
    """CPU seconds of the finished children (the daemon with its code server and runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _listed(emulator: Any) -> bool:
    """Whether the sensor has made its list call."""
    return ("GET", "/v1/batches") in {(r.method, r.path) for r in emulator.requests}


def _wait_for(
    condition: Any,
    daemon: subprocess.Popen[bytes],
    tmp_path: Path,
    *,
    timeout: float,
    every: float = 0.5,
    progress: Any = lambda: "",
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert daemon.poll() is None, f"the daemon exited:\n{_daemon_log(tmp_path)}"
        assert time.monotonic() < deadline, (
            f"timed out after {timeout:.0f} s ({progress()}):\n{_daemon_log(tmp_path)}"
        )
        time.sleep(every)
