"""The Dagster daemon itself runs the batch sensor: a real ``dagster-daemon run`` process ticks
the sensor, launches the results runs in their own processes, and they write Parquet to an S3
bucket (moto's server). The emulator and moto live in this test process; the daemon and its run
workers reach them over loopback."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import dagster as dg
import fsspec
import pyarrow.parquet as pq
import pytest

from tests.helpers import CODE_LOCATION_HEADER, stop_process_group, write_dagster_project

# Real processes (daemon, webserver, the demo, the benchmarks): `pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow

N_PROMPTS = 6
PER_BATCH = 3  # -> two batches, two partitions, two runs launched by the daemon
RESULTS_KEY = dg.AssetKey("docs_results")
RESULTS_JOB = "docs_results_job"
SENSOR = "docs_batch_sensor"

CODE_LOCATION = (
    CODE_LOCATION_HEADER
    + """
@dg.asset
def prompts() -> pa.Table:
    n = CONFIG["n_prompts"]
    return pa.table({{"id": [f"doc-{{i}}" for i in range(n)], "text": [f"Is {{i}} good?" for i in range(n)]}})


docs = build_together_batch_defs(
    name="docs",
    prompts=prompts,
    storage=BatchStorageLayout(CONFIG["storage_url"], CONFIG["storage_options"]),
    template=RequestTemplate(model="test-model", prompt_column="text"),
    id_column="id",
    batching=BatchingOptions(max_requests_per_batch=CONFIG["per_batch"]),
    watch=SensorOptions(minimum_interval_seconds=1),
)
submit_job = dg.define_asset_job("submit_job", selection=[prompts.key, docs.submit_asset.key])

defs = dg.Definitions.merge(
    docs.defs,
    dg.Definitions(
        assets=[prompts],
        jobs=[submit_job],
        resources=RESOURCES,
    ),
)
"""
)

# Defaults otherwise: queued runs, launched by the daemon as subprocesses (DefaultRunLauncher).
DAGSTER_YAML = """\
telemetry:
  enabled: false
"""


def _load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("daemon_e2e_defs", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def project(
    tmp_path: Path,
    emulator: Any,
    api_key: str,
    s3_server: Any,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    """The code location, workspace and instance directory, written into tmp_path."""
    config = {
        "n_prompts": N_PROMPTS,
        "per_batch": PER_BATCH,
        "storage_url": f"{s3_bucket}/together",
        "storage_options": s3_server.storage_options,
        "base_url": emulator.base_url,
    }
    return write_dagster_project(
        tmp_path,
        monkeypatch,
        api_key,
        dagster_yaml=DAGSTER_YAML,
        code_location=CODE_LOCATION,
        config=config,
        location="daemon_e2e",
    )


@pytest.fixture
def instance(project: dict[str, Any]) -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.from_config(str(project["home"])) as inst:
        yield inst


def _start_daemon(tmp_path: Path) -> subprocess.Popen[bytes]:
    log = open(tmp_path / "daemon.log", "wb")  # the child keeps its own copy of the descriptor
    try:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=str(tmp_path),
            # DAGSTER_HOME and TOGETHER_API_KEY (monkeypatched) and moto's fake AWS credentials.
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group: the code server and run workers it spawns die with it.
            start_new_session=True,
        )
    finally:
        log.close()


def _daemon_log(tmp_path: Path) -> str:
    return (tmp_path / "daemon.log").read_text(errors="replace")[-6000:]


@pytest.mark.timeout(180)
def test_daemon_runs_the_sensor_and_the_results_land_in_s3(
    tmp_path: Path,
    project: dict[str, Any],
    instance: dg.DagsterInstance,
    emulator: Any,
) -> None:
    module = _load_module(tmp_path / "defs.py")
    defs: dg.Definitions = module.defs
    submit = defs.resolve_job_def("submit_job").execute_in_process(instance=instance)
    assert submit.success
    batch_ids = sorted(instance.get_dynamic_partitions("docs_batches"))
    assert len(batch_ids) == N_PROMPTS // PER_BATCH
    assert instance.get_materialized_partitions(RESULTS_KEY) == set()

    daemon = _start_daemon(tmp_path)
    try:
        deadline = time.monotonic() + 120
        while instance.get_materialized_partitions(RESULTS_KEY) != set(batch_ids):
            assert daemon.poll() is None, f"the daemon exited:\n{_daemon_log(tmp_path)}"
            assert time.monotonic() < deadline, (
                f"results not materialised in time:\n{_daemon_log(tmp_path)}"
            )
            time.sleep(0.5)
        # A few more sensor ticks (1 s interval): nothing may be launched twice.
        time.sleep(4)
        runs = instance.get_runs(dg.RunsFilter(job_name=RESULTS_JOB))
    finally:
        stop_process_group(daemon)

    assert sorted(run.tags["dagster/partition"] for run in runs) == batch_ids
    assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
    for run in runs:
        # Launched by the daemon's sensor, with the library's run key and tags.
        assert run.tags["dagster/sensor_name"] == SENSOR
        batch_id = run.tags["dagster/partition"]
        assert run.tags["dagster/run_key"] == f"{batch_id}:COMPLETED"
        assert run.tags["dagster-together/batch_id"] == batch_id

    # The Parquet is in the bucket: one row per input, every input once.
    config = project["config"]
    fs = fsspec.filesystem("s3", **config["storage_options"])
    ids: list[str] = []
    for batch_id in batch_ids:
        path = f"{config['storage_url']}/results/batch_id={batch_id}/part-0.parquet"
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
        assert table.num_rows == PER_BATCH
        assert set(table.column("status").to_pylist()) == {"succeeded"}
        ids += table.column("custom_id").to_pylist()
    assert sorted(ids) == sorted(f"doc-{i}" for i in range(N_PROMPTS))

    # The daemon's sensor polled Together with its one list call.
    assert ("GET", "/v1/batches") in {(r.method, r.path) for r in emulator.requests}
