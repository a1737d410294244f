"""The batch sensor over a real instance and real HTTP: one GET /batches per tick, one run
request per finished batch whatever its status, no duplicates, and API outages survived."""

import json
import time
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pyarrow as pa
import pytest

from dagster_together.emulator import Emulator
from dagster_together.resources import TogetherResource
from dagster_together.sensors import (
    BATCH_STATUS_TAG,
    MISSING_TICKS_BEFORE_DROP,
    tick_budget_seconds,
    together_batch_sensor,
)
from tests.helpers import SensorPipeline


class Pipeline(SensorPipeline):
    """A submitted pipeline plus a way to tick its sensor like the daemon does."""

    def __init__(
        self, emu: Emulator, api_key: str, instance: dg.DagsterInstance, tmp_path: Path, n: int
    ) -> None:
        table = pa.table({"id": list(range(n)), "text": [f"prompt {i}" for i in range(n)]})
        super().__init__(
            emu,
            api_key,
            instance,
            tmp_path / "store",
            table,
            max_requests_per_batch=1,  # one batch per row: n batches
        )
        self.batch_ids: list[str] = self.submit() if n else []

    def tick(self) -> dg.SensorResult | dg.SkipReason:
        """One evaluation (the emulator's request log cleared first)."""
        self.emu.clear_requests()
        return self.evaluate_sensor()

    def api_calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.emu.requests]


def requested(result: Any) -> dict[str, str]:
    """``{batch_id: status}`` of the run requests of a tick."""
    if not isinstance(result, dg.SensorResult):
        return {}
    out = {}
    for request in result.run_requests or []:
        assert request.run_key == f"{request.partition_key}:{request.tags[BATCH_STATUS_TAG]}"
        out[request.partition_key] = request.tags[BATCH_STATUS_TAG]
    return out


def test_one_run_per_final_status_no_duplicates(
    slow_emu: Emulator, api_key: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    p = Pipeline(slow_emu, api_key, instance, tmp_path, n=5)
    b = p.batch_ids

    # Nothing finished: no run request, exactly one list call, no per-job call.
    for _ in range(2):
        assert requested(p.tick()) == {}
        assert p.api_calls() == [("GET", "/v1/batches")]

    slow_emu.set_batch_status(b[0], "COMPLETED")
    slow_emu.set_batch_status(b[1], "FAILED")
    assert requested(p.tick()) == {b[0]: "COMPLETED", b[1]: "FAILED"}
    assert p.api_calls() == [("GET", "/v1/batches")]
    assert requested(p.tick()) == {}  # already launched: not again

    slow_emu.set_batch_status(b[2], "EXPIRED", done_fraction=0.0)
    slow_emu.set_batch_status(b[3], "CANCELLED", done_fraction=0.0)
    assert requested(p.tick()) == {b[2]: "EXPIRED", b[3]: "CANCELLED"}
    assert p.api_calls() == [("GET", "/v1/batches")]

    slow_emu.set_batch_status(b[4], "COMPLETED")
    assert requested(p.tick()) == {b[4]: "COMPLETED"}

    # Everything handed over: the sensor does not even call the API.
    result = p.tick()
    assert requested(result) == {} and p.api_calls() == []
    assert isinstance(result, dg.SensorResult) and result.skip_reason is not None


@pytest.mark.parametrize("outage", ["503", "connection refused"])
def test_api_outage_loses_nothing_and_launches_nothing_twice(
    slow_emu: Emulator,
    api_key: str,
    instance: dg.DagsterInstance,
    tmp_path: Path,
    outage: str,
) -> None:
    p = Pipeline(slow_emu, api_key, instance, tmp_path, n=3)
    b = p.batch_ids
    slow_emu.set_batch_status(b[0], "COMPLETED")
    assert requested(p.tick()) == {b[0]: "COMPLETED"}

    slow_emu.set_batch_status(b[1], "FAILED")
    if outage == "503":
        slow_emu.add_fault("GET", r"^/v1/batches$", kind="status", status=503, times=None)
    else:
        slow_emu.stop()
    started = time.monotonic()
    with pytest.raises(Exception, match="batches"):
        p.tick()
    assert time.monotonic() - started < 20  # bounded retries: far below the sensor timeout
    if outage == "503":
        assert p.api_calls() == [("GET", "/v1/batches")] * 2  # one try + one retry, no more
        slow_emu.clear_faults()
    else:
        slow_emu.start()

    slow_emu.set_batch_status(b[2], "CANCELLED")
    assert requested(p.tick()) == {b[1]: "FAILED", b[2]: "CANCELLED"}
    assert requested(p.tick()) == {}


def test_cursor_is_pruned_once_the_instance_knows_the_run(
    slow_emu: Emulator, api_key: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    p = Pipeline(slow_emu, api_key, instance, tmp_path, n=2)
    b = p.batch_ids
    slow_emu.set_batch_status(b[0], "COMPLETED")
    assert requested(p.tick()) == {b[0]: "COMPLETED"}
    assert json.loads(p.cursor or "{}")["launched"] == {b[0]: "COMPLETED"}

    # The run the sensor asked for (its job, its partition) materialises the partition, checks
    # included: the instance is now the source of truth.
    assert p.bundle.sensor.job_name == "docs_results_job"
    job = p.defs.resolve_job_def("docs_results_job")
    result = job.execute_in_process(instance=instance, partition_key=b[0])
    assert result.success
    assert {e.check_name for e in result.get_asset_check_evaluations()} == {
        "completeness",
        "error_rate",
    }
    p.tick()
    assert json.loads(p.cursor or "{}")["launched"] == {}

    # Even with the cursor lost, a materialised partition is never requested again.
    p.cursor = "not json"
    assert requested(p.tick()) == {}
    assert p.api_calls() == [("GET", "/v1/batches")]  # b[1] is still watched


def test_early_manual_materialisation_does_not_hide_the_batch(
    slow_emu: Emulator, api_key: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    p = Pipeline(slow_emu, api_key, instance, tmp_path, n=1)
    [batch_id] = p.batch_ids
    # Someone clicks Materialize before the batch is done: that run fails (not terminal yet).
    early = dg.materialize(
        [p.bundle.results_asset],
        partition_key=batch_id,
        instance=instance,
        resources=p.resources,
        raise_on_error=False,
    )
    assert not early.success
    assert requested(p.tick()) == {}
    slow_emu.set_batch_status(batch_id, "COMPLETED")
    assert requested(p.tick()) == {batch_id: "COMPLETED"}
    assert requested(p.tick()) == {}


def test_no_batches_no_api_call(
    slow_emu: Emulator, api_key: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    p = Pipeline(slow_emu, api_key, instance, tmp_path, n=0)
    result = p.tick()
    assert isinstance(result, dg.SkipReason) and p.api_calls() == []


def test_batch_missing_from_the_list_stays_watched(
    slow_emu: Emulator, api_key: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    p = Pipeline(slow_emu, api_key, instance, tmp_path, n=1)
    instance.add_dynamic_partitions(p.bundle.partitions_def.name, ["not-known-to-together"])
    assert requested(p.tick()) == {}
    slow_emu.set_batch_status(p.batch_ids[0], "COMPLETED")
    assert requested(p.tick()) == {p.batch_ids[0]: "COMPLETED"}


def test_batch_gone_from_the_list_is_reported_once_then_dropped(
    slow_emu: Emulator, api_key: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    p = Pipeline(slow_emu, api_key, instance, tmp_path, n=1)
    gone = "deleted-or-other-account"
    instance.add_dynamic_partitions(p.bundle.partitions_def.name, [gone])
    observed = []
    for _ in range(MISSING_TICKS_BEFORE_DROP + 2):
        result = p.tick()
        assert requested(result) == {}
        observed += [e for e in (result.asset_events or []) if e.partition == gone]
    # Reported once, on the partition, with what to do; then no longer watched.
    [observation] = observed
    assert observation.asset_key == p.bundle.results_asset.key
    assert "no longer watched" in observation.metadata["together/batch_gone"].value
    assert json.loads(p.cursor or "{}")["gone"] == [gone]
    # The batch that does exist is still watched and launched when it ends.
    slow_emu.set_batch_status(p.batch_ids[0], "COMPLETED")
    assert requested(p.tick()) == {p.batch_ids[0]: "COMPLETED"}


def test_canceling_is_watched_until_cancelled_then_collected(
    slow_emu: Emulator, api_key: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    from dagster_together.client import TogetherClient

    p = Pipeline(slow_emu, api_key, instance, tmp_path, n=1)
    [batch_id] = p.batch_ids
    with TogetherClient(api_key, slow_emu.base_url) as client:
        assert client.batches.cancel_batch(batch_id).status.value == "CANCELING"
    assert requested(p.tick()) == {}  # still running: its partial output is not final yet
    deadline = time.monotonic() + 10
    while slow_emu.batches()[0]["status"] != "CANCELLED":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert requested(p.tick()) == {batch_id: "CANCELLED"}


def test_tick_budget_follows_the_sensor_timeout() -> None:
    assert tick_budget_seconds({}) == pytest.approx(45.0)  # Dagster's default of 60 s
    assert tick_budget_seconds({"DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS": "180"}) == 135.0
    assert tick_budget_seconds({"DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS": "junk"}) == 45.0


# ---------------------------------------------------------------------------------------------
# Scale and unknown statuses: a scripted /batches answer (httpx.MockTransport), still real HTTP
# semantics for the client, no network.
# ---------------------------------------------------------------------------------------------
class ScriptedResource(TogetherResource):
    """A TogetherResource whose clients answer GET /batches from a fixed list of jobs."""

    def make_client(self, **_overrides: Any) -> Any:
        from dagster_together.client import TogetherClient

        jobs = SCRIPT["jobs"]

        def handler(request: httpx.Request) -> httpx.Response:
            SCRIPT["calls"].append((request.method, request.url.path))
            return httpx.Response(200, json=jobs)

        return TogetherClient(
            api_key="k",
            base_url="http://together.test/v1",
            max_retries=0,
            http_transport=httpx.MockTransport(handler),
        )


SCRIPT: dict[str, Any] = {"jobs": [], "calls": []}


def _job(batch_id: str, status: str, progress: float = 50.0) -> dict[str, Any]:
    return {
        "id": batch_id,
        "user_id": "u",
        "input_file_id": f"file-{batch_id}",
        "file_size_bytes": 10,
        "status": status,
        "job_deadline": "2030-01-01T00:00:00Z",
        "created_at": "2029-12-31T00:00:00Z",
        "endpoint": "/v1/chat/completions",
        "progress": progress,
    }


def _scripted_sensor(instance: dg.DagsterInstance, ids: list[str]) -> tuple[Any, dict[str, Any]]:
    partitions = dg.DynamicPartitionsDefinition(name="scripted_batches")

    @dg.asset(partitions_def=partitions)
    def scripted_results() -> None: ...

    job = dg.define_asset_job("scripted_job", selection=[scripted_results])
    sensor = together_batch_sensor(
        name="scripted_sensor",
        job=job,
        results_asset_key=scripted_results.key,
        partitions_def=partitions,
    )
    instance.add_dynamic_partitions("scripted_batches", ids)
    resources = {"together": ScriptedResource()}
    defs = dg.Definitions(assets=[scripted_results], sensors=[sensor], resources=resources)
    return sensor, {"definitions": defs, "resources": resources}


def test_thousand_batches_in_flight_one_call_and_fast(instance: dg.DagsterInstance) -> None:
    ids = [f"batch-{i:04d}" for i in range(1000)]
    statuses = ["IN_PROGRESS", "VALIDATING", "COMPLETED", "FAILED", "EXPIRED"]
    SCRIPT["jobs"] = [
        _job(b, statuses[i % 5] if i < 100 else "IN_PROGRESS") for i, b in enumerate(ids)
    ]
    SCRIPT["calls"] = []
    sensor, kwargs = _scripted_sensor(instance, ids)

    started = time.monotonic()
    with dg.build_sensor_context(instance=instance, **kwargs) as context:
        result = sensor(context)
    elapsed = time.monotonic() - started
    assert elapsed < 10, elapsed  # the sensor timeout is 60 s
    assert SCRIPT["calls"] == [("GET", "/v1/batches")]
    assert len(requested(result)) == 60  # 20 each of COMPLETED, FAILED, EXPIRED among the first 100
    assert len(result.cursor or "") < 10_000  # only launched-but-not-yet-run ids are kept

    SCRIPT["calls"] = []
    with dg.build_sensor_context(instance=instance, cursor=result.cursor, **kwargs) as context:
        assert requested(sensor(context)) == {}
    assert SCRIPT["calls"] == [("GET", "/v1/batches")]


def test_unknown_status_is_treated_as_running(
    instance: dg.DagsterInstance, capfd: pytest.CaptureFixture[str]
) -> None:
    SCRIPT["jobs"] = [_job("b1", "PAUSED_FOR_MAINTENANCE"), _job("b2", "COMPLETED")]
    SCRIPT["calls"] = []
    sensor, kwargs = _scripted_sensor(instance, ["b1", "b2"])
    with dg.build_sensor_context(instance=instance, **kwargs) as context:
        result = sensor(context)
    assert requested(result) == {"b2": "COMPLETED"}
    logged = capfd.readouterr().err  # the sensor's context.log
    assert "'PAUSED_FOR_MAINTENANCE'" in logged and "treating it as still running" in logged
    assert (
        "1 batch(es) still running (1 PAUSED_FOR_MAINTENANCE): b1 PAUSED_FOR_MAINTENANCE 50%"
        in logged
    )

    SCRIPT["jobs"] = [_job("b1", "COMPLETED"), _job("b2", "COMPLETED")]
    with dg.build_sensor_context(instance=instance, cursor=result.cursor, **kwargs) as context:
        assert requested(sensor(context)) == {"b1": "COMPLETED"}
