"""The submit and results assets over a real Dagster instance, real HTTP to the emulator and real
storage (local files and S3 on a moto server)."""

import json
import os
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dagster_together import (
    BatchingOptions,
    BatchStorageLayout,
    DagsterTogetherTranslator,
    ResultsOptions,
    SensorOptions,
    TogetherBatchDefs,
    TogetherResource,
    WaitOptions,
    build_together_batch_defs,
)
from dagster_together.requests import RequestTemplate
from dagster_together.results import join_results
from tests.helpers import wait_terminal

TEMPLATE = RequestTemplate(
    model="meta-llama/Llama-3.3-70B-Instruct-Turbo",
    prompt_column="text",
    system_prompt="Classify the sentiment of the review.",
    body={"max_tokens": 8},
)


def reviews_table(n: int = 5, *, error_rows: tuple[int, ...] = ()) -> pa.Table:
    """``n`` reviews; rows in ``error_rows`` ask the emulator to fail that request."""
    texts = [
        f"Review {i}: " + ("EMULATE_ERROR" if i in error_rows else "works as described")
        for i in range(n)
    ]
    return pa.table(
        {
            "review_id": list(range(100, 100 + n)),
            "text": texts,
            "stars": [i % 5 + 1 for i in range(n)],
        }
    )


def make_prompts_asset(table: pa.Table, name: str = "reviews") -> dg.AssetsDefinition:
    @dg.asset(name=name)
    def _prompts() -> pa.Table:
        return table

    return _prompts


def build(
    storage: str | BatchStorageLayout, prompts: dg.AssetsDefinition, **kwargs: Any
) -> TogetherBatchDefs:
    kwargs.setdefault("template", TEMPLATE)
    kwargs.setdefault("id_column", "review_id")
    return build_together_batch_defs(name="reviews", prompts=prompts, storage=storage, **kwargs)


def per_batch(n: int) -> BatchingOptions:
    return BatchingOptions(max_requests_per_batch=n)


def resources(emulator: Any, api_key: str) -> dict[str, Any]:
    return {"together": TogetherResource(api_key=api_key, base_url=emulator.base_url)}


def submit(
    bundle: TogetherBatchDefs,
    prompts: dg.AssetsDefinition,
    instance: dg.DagsterInstance,
    res: dict[str, Any],
    **kwargs: Any,
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [prompts, bundle.submit_asset],
        instance=instance,
        resources=res,
        **kwargs,
    )


def values(metadata: Any) -> dict:
    """Metadata values by key, our ``together/`` prefix left off."""
    return {k.removeprefix("together/"): v.value for k, v in metadata.items()}


def submit_metadata(result: dg.ExecuteInProcessResult, bundle: TogetherBatchDefs) -> dict:
    assert bundle.submit_asset is not None
    [mat] = result.asset_materializations_for_node(bundle.submit_asset.node_def.name)
    return values(mat.metadata)


def batch_rows(meta: dict) -> list[dict]:
    """The submit's batches table as dicts."""
    return [record.data for record in meta["batches"].records]


def materialize_results(
    bundle: TogetherBatchDefs,
    batch_id: str,
    instance: dg.DagsterInstance,
    res: dict[str, Any],
    **kwargs: Any,
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [bundle.results_asset],
        partition_key=batch_id,
        instance=instance,
        resources=res,
        **kwargs,
    )


def results_metadata(result: dg.ExecuteInProcessResult, bundle: TogetherBatchDefs) -> dict:
    """The results partition's metadata (a final table reported in the same run left aside)."""
    [mat] = [
        m
        for m in result.asset_materializations_for_node(bundle.results_asset.node_def.name)
        if m.asset_key == bundle.results_asset.key
    ]
    return values(mat.metadata)


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    """The message of the one step failure, with its causes."""
    [failure] = result.get_step_failure_events()
    error, parts = failure.event_specific_data.error, []
    while error is not None:
        parts.append(error.message)
        error = error.cause
    return "\n".join(parts)


def checks(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def batch_posts(emulator: Any) -> int:
    return sum(1 for r in emulator.requests if r.method == "POST" and r.path == "/v1/batches")


# ---------------------------------------------------------------------------------------------
def test_submit_then_results_end_to_end(
    emulator: Any, api_key: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    table = reviews_table(5, error_rows=(3,))
    prompts = make_prompts_asset(table)
    bundle = build(str(tmp_path / "store"), prompts, batching=per_batch(2))
    res = resources(emulator, api_key)

    result = submit(bundle, prompts, instance, res)
    assert result.success
    meta = submit_metadata(result, bundle)
    ids = meta["batch_ids"]
    assert meta["n_batches"] == 3 and meta["n_requests"] == 5
    assert meta["n_created"] == 3 and meta["n_reused"] == 0
    rows = batch_rows(meta)
    assert len({row["input_file_id"] for row in rows}) == 3
    assert [row["n_requests"] for row in rows] == [2, 2, 1]
    # One upload per chunk, one list for the reuse lookup, one create per chunk.
    assert batch_posts(emulator) == 3
    assert sum(1 for r in emulator.requests if r.method == "GET" and r.path == "/v1/batches") == 1
    assert sorted(instance.get_dynamic_partitions(bundle.partitions_def.name)) == sorted(ids)

    layout = bundle.layout
    for row in rows:
        assert row["input_copy"] == layout.input_jsonl(row["batch_id"])
        assert Path(row["input_copy"]).read_text().count("\n") == row["n_requests"]
        columns = pq.read_table(layout.inputs_parquet(row["batch_id"]))
        assert columns.column_names == ["custom_id", "review_id", "text", "stars"]

    wait_terminal(emulator, ids)
    rows = []
    checks_by_batch = {}
    for batch_id in ids:
        out = materialize_results(bundle, batch_id, instance, res)
        assert out.success
        md = results_metadata(out, bundle)
        path = layout.results_parquet(batch_id)
        assert md["dagster/uri"] == path
        assert md["batch_status"] == "COMPLETED"
        written = pq.read_table(path)
        assert md["dagster/row_count"] == written.num_rows
        schema = md["dagster/column_schema"].columns
        assert [c.name for c in schema] == written.column_names
        assert all(c.description for c in schema)  # every column says what it holds
        preview = md["preview"]
        assert [c.name for c in preview.schema.columns][:2] == ["custom_id", "status"]
        assert (
            preview.records
            and preview.records[0].data["custom_id"] == written["custom_id"][0].as_py()
        )
        assert md["total_tokens"] > 0
        assert md[f"{TEMPLATE.model}/total_tokens"] == md["total_tokens"]
        # Each figure once: no other key spells the token totals.
        assert sum(1 for key in md if key.endswith("total_tokens")) == 2
        assert Path(layout.output_jsonl(batch_id)).exists()
        # Joined from the submit's request rows: the same table the request file gives.
        assert Path(layout.request_rows_parquet(batch_id)).exists()
        from_jsonl = join_results(
            inputs=layout.input_jsonl(batch_id),
            input_columns=layout.inputs_parquet(batch_id),
            outputs=layout.output_jsonl(batch_id),
            errors=[e for e in [layout.errors_jsonl(batch_id)] if Path(e).exists()],
            destination=str(tmp_path / "from-jsonl.parquet"),
            batch_status="COMPLETED",
        )
        assert pq.read_table(from_jsonl.destination).equals(written)
        rows.extend({**row, "batch_id": batch_id} for row in written.to_pylist())
        checks_by_batch[batch_id] = checks(out)
        assert checks_by_batch[batch_id]["completeness"].passed

    # One row per input, joined to the user's own columns, with a status each.
    assert sorted(r["custom_id"] for r in rows) == [str(i) for i in range(100, 105)]
    # The results of every batch read as one hive-partitioned table, as DuckDB or Spark read it.
    import pyarrow.dataset as ds

    dataset = ds.dataset(layout.results_url, format="parquet", partitioning="hive").to_table()
    assert sorted(dataset["custom_id"].to_pylist()) == [str(i) for i in range(100, 105)]
    assert set(dataset["batch_id"].to_pylist()) == set(ids)
    by_id = {r["custom_id"]: r for r in rows}
    assert by_id["103"]["status"] == "failed" and by_id["103"]["error"]
    assert all(by_id[i]["status"] == "succeeded" for i in ("100", "101", "102", "104"))
    assert by_id["104"]["stars"] == 5 and by_id["100"]["content"]
    # The raw line is kept where it is the evidence: the failed row's, not the answers'.
    assert json.loads(by_id["103"]["response"])["custom_id"] == "103"
    assert by_id["100"]["response"] is None

    # The batch holding the failed request: error rate 1/2 > 5% -> a WARN check result.
    failed_batch = by_id["103"]["batch_id"]
    assert Path(layout.errors_jsonl(failed_batch)).exists()
    rate = checks_by_batch[failed_batch]["error_rate"]
    assert not rate.passed and rate.severity == dg.AssetCheckSeverity.WARN
    assert rate.metadata["error_rate"].value == pytest.approx(0.5)
    assert all(c["error_rate"].passed for b, c in checks_by_batch.items() if b != failed_batch)


def test_results_of_an_older_submission_join_the_request_file(
    emulator: Any, api_key: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    """Without the submit's request rows (an older submission) the request JSONL gives the
    rows; without the JSONL either, it is downloaded from Together."""
    prompts = make_prompts_asset(reviews_table(4))
    bundle = build(str(tmp_path / "store"), prompts, batching=per_batch(2))
    res = resources(emulator, api_key)
    assert submit(bundle, prompts, instance, res).success
    ids = sorted(instance.get_dynamic_partitions(bundle.partitions_def.name))
    wait_terminal(emulator, ids)
    layout = bundle.layout
    expected = {}
    for batch_id in ids:
        assert materialize_results(bundle, batch_id, instance, res).success
        expected[batch_id] = pq.read_table(layout.results_parquet(batch_id))
        os.remove(layout.request_rows_parquet(batch_id))
    os.remove(layout.input_jsonl(ids[1]))
    for batch_id in ids:
        assert materialize_results(bundle, batch_id, instance, res).success
        assert pq.read_table(layout.results_parquet(batch_id)).equals(expected[batch_id])
    assert os.path.exists(layout.input_jsonl(ids[1]))  # downloaded again


def test_resubmit_reuses_batches(
    emulator: Any, api_key: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    prompts = make_prompts_asset(reviews_table(4))
    bundle = build(str(tmp_path / "store"), prompts, batching=per_batch(2))
    res = resources(emulator, api_key)

    first = submit_metadata(submit(bundle, prompts, instance, res), bundle)
    second = submit_metadata(submit(bundle, prompts, instance, res), bundle)
    assert second["batch_ids"] == first["batch_ids"]
    assert second["n_reused"] == 2 and second["n_created"] == 0
    assert batch_posts(emulator) == 2
    assert len(emulator.batches()) == 2


def test_crash_between_create_and_record_is_healed_by_rerun(
    emulator: Any,
    api_key: str,
    tmp_path: Path,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prompts = make_prompts_asset(reviews_table(3))
    bundle = build(str(tmp_path / "store"), prompts)
    res = resources(emulator, api_key)

    # The first copy to storage (right after create_batch) dies: the batch exists on Together but
    # is recorded nowhere in Dagster.
    real_put = BatchStorageLayout.put_file
    calls = {"n": 0}

    def crash_once(self: BatchStorageLayout, local: str, location: str) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("simulated crash after create_batch")
        real_put(self, local, location)

    monkeypatch.setattr(BatchStorageLayout, "put_file", crash_once)
    crashed = submit(bundle, prompts, instance, res, raise_on_error=False)
    assert not crashed.success
    [batch] = emulator.batches()
    # Paid for, so recorded anyway (the sensor watches it), and the error names it.
    assert instance.get_dynamic_partitions(bundle.partitions_def.name) == [batch["id"]]
    assert f"Batch {batch['id']} was created" in failure_text(crashed)
    # Its results can be joined already: the request file comes back from Together.
    wait_terminal(emulator, [batch["id"]])
    early = materialize_results(bundle, batch["id"], instance, res)
    assert early.success
    assert pq.read_table(bundle.layout.results_parquet(batch["id"])).num_rows == 3

    retried = submit_metadata(submit(bundle, prompts, instance, res), bundle)
    assert len(emulator.batches()) == 1 and batch_posts(emulator) == 1
    assert retried["n_reused"] == 1
    assert instance.get_dynamic_partitions(bundle.partitions_def.name) == retried["batch_ids"]


def test_failed_batch_is_not_reused(
    emulator: Any, api_key: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    prompts = make_prompts_asset(reviews_table(2))
    bundle = build(str(tmp_path / "store"), prompts)
    res = resources(emulator, api_key)
    [first] = submit_metadata(submit(bundle, prompts, instance, res), bundle)["batch_ids"]
    emulator.set_batch_status(first, "CANCELLED")
    second = submit_metadata(submit(bundle, prompts, instance, res), bundle)
    assert second["n_created"] == 1 and second["batch_ids"] != [first]


@pytest.mark.parametrize(
    "table, reason",
    [
        (
            pa.table({"review_id": [1, 1], "text": ["a", "b"]}),
            "review_id '1' appears twice: rows 1 and 2",
        ),
        (pa.table({"review_id": [1, 2], "body_text": ["a", "b"]}), "no column 'text'"),
        (pa.table({"review_id": ["x" * 65], "text": ["a"]}), "over the limit of 64"),
        (pa.table({"review_id": [1, 2], "text": ["a", None]}), "null"),
    ],
    ids=["duplicate-id", "missing-column", "long-id", "null-prompt"],
)
def test_bad_prompts_fail_before_any_request(
    emulator: Any,
    api_key: str,
    tmp_path: Path,
    instance: dg.DagsterInstance,
    table: pa.Table,
    reason: str,
) -> None:
    prompts = make_prompts_asset(table)
    bundle = build(str(tmp_path / "store"), prompts)
    result = submit(bundle, prompts, instance, resources(emulator, api_key), raise_on_error=False)
    assert not result.success
    assert reason in failure_text(result)
    assert "Nothing was sent to Together" in failure_text(result)
    assert emulator.requests == []
    assert instance.get_dynamic_partitions(bundle.partitions_def.name) == []


def test_empty_prompts_submit_nothing(
    emulator: Any, api_key: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    prompts = make_prompts_asset(reviews_table(0))
    bundle = build(str(tmp_path / "store"), prompts)
    meta = submit_metadata(submit(bundle, prompts, instance, resources(emulator, api_key)), bundle)
    assert meta["n_batches"] == 0 and emulator.requests == []


@pytest.mark.parametrize(
    "status, expected", [("EXPIRED", "expired"), ("CANCELLED", "cancelled"), ("FAILED", "missing")]
)
def test_unfinished_batch_still_materialises_partial_results(
    api_key: str, tmp_path: Path, instance: dg.DagsterInstance, status: str, expected: str
) -> None:
    from dagster_together.emulator import Emulator

    with Emulator(api_key=api_key, validate_seconds=0.0, run_seconds=3600) as emu:
        prompts = make_prompts_asset(reviews_table(4))
        bundle = build(str(tmp_path / "store"), prompts)
        res = resources(emu, api_key)
        [batch_id] = submit_metadata(submit(bundle, prompts, instance, res), bundle)["batch_ids"]

        running = materialize_results(bundle, batch_id, instance, res, raise_on_error=False)
        assert not running.success
        assert "sensor launches this run by itself" in failure_text(running)

        emu.set_batch_status(batch_id, status, done_fraction=0.5)
        out = materialize_results(bundle, batch_id, instance, res)
        md = results_metadata(out, bundle)
        table = pq.read_table(bundle.layout.results_parquet(batch_id))
        assert table.num_rows == 4 and md["batch_status"] == status
        statuses = sorted(table["status"].to_pylist())
        assert statuses == sorted(["succeeded"] * 2 + [expected] * 2)
        assert md["n_succeeded"] == 2 and md[f"n_{expected}"] == 2
        result_checks = checks(out)
        assert result_checks["completeness"].passed  # every input exactly once
        assert not result_checks["error_rate"].passed


def test_results_on_s3(
    emulator: Any, api_key: str, s3_server: Any, s3_bucket: str, instance: dg.DagsterInstance
) -> None:
    import s3fs

    prompts = make_prompts_asset(reviews_table(3))
    url = f"{s3_bucket}/together/reviews"
    bundle = build(BatchStorageLayout(url, s3_server.storage_options), prompts)
    res = resources(emulator, api_key)
    [batch_id] = submit_metadata(submit(bundle, prompts, instance, res), bundle)["batch_ids"]
    wait_terminal(emulator, [batch_id])
    md = results_metadata(materialize_results(bundle, batch_id, instance, res), bundle)

    destination = f"{url}/results/batch_id={batch_id}/part-0.parquet"
    assert md["dagster/uri"] == destination
    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    for name in ("input.jsonl", "inputs.parquet", "output.jsonl"):
        assert fs.exists(f"{url}/batches/{batch_id}/{name}")
    with fs.open(destination, "rb") as handle:
        table = pq.read_table(handle)
    assert table.num_rows == 3 and set(table["status"].to_pylist()) == {"succeeded"}


class Prefixed(DagsterTogetherTranslator):
    """Keys under ``llm/``, in group ``llm``, owned by a team: what users ask a translator for."""

    def get_submit_spec(self, props: Any) -> dg.AssetSpec:
        spec = super().get_submit_spec(props)
        return spec.replace_attributes(key=spec.key.with_prefix("llm"), group_name="llm")

    def get_results_spec(self, props: Any) -> dg.AssetSpec:
        spec = super().get_results_spec(props)
        return spec.replace_attributes(
            key=spec.key.with_prefix("llm"), group_name="llm", owners=["team:ml"]
        )


def test_prebuilt_requests_table_without_template(
    emulator: Any, api_key: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    table = pa.table(
        {
            "custom_id": ["a", "b"],
            "body": [
                '{"model": "m1", "messages": [{"role": "user", "content": "hi"}]}',
                '{"model": "m1", "messages": [{"role": "user", "content": "ho"}]}',
            ],
        }
    )
    prompts = make_prompts_asset(table)
    bundle = build_together_batch_defs(
        name="raw", prompts=prompts, storage=str(tmp_path / "store"), translator=Prefixed()
    )
    assert bundle.results_asset.key == dg.AssetKey(["llm", "raw_results"])
    res = resources(emulator, api_key)
    result = dg.materialize(
        [prompts, bundle.submit_asset],
        instance=instance,
        resources=res,
    )
    [batch_id] = submit_metadata(result, bundle)["batch_ids"]
    # Only custom_id beside the body: no user columns to keep, the request file is the input.
    assert not os.path.exists(bundle.layout.inputs_parquet(batch_id))
    wait_terminal(emulator, [batch_id])
    materialize_results(bundle, batch_id, instance, res)
    written = pq.read_table(bundle.layout.results_parquet(batch_id))
    assert written["prompt"].to_pylist() == ["hi", "ho"]
    assert written["status"].to_pylist() == ["succeeded", "succeeded"]


def test_api_key_never_written_anywhere(
    emulator: Any, api_key: str, tmp_path: Path, disk_instance: dg.DagsterInstance
) -> None:
    instance = disk_instance  # the event log, run storage and compute logs are files
    prompts = make_prompts_asset(reviews_table(3))
    store = tmp_path / "store"
    bundle = build(str(store), prompts)
    res = resources(emulator, api_key)
    submitted = submit(bundle, prompts, instance, res)
    [batch_id] = submit_metadata(submitted, bundle)["batch_ids"]
    wait_terminal(emulator, [batch_id])
    results = materialize_results(bundle, batch_id, instance, res)

    secret = api_key.encode()
    for run in (submitted, results):
        for event in run.all_events:
            assert api_key not in repr(event)
    # Event log, run storage, compute logs, pickled outputs, and every file the pipeline wrote.
    for root in (Path(instance.root_directory), store):
        for path in root.rglob("*"):
            if path.is_file():
                assert secret not in path.read_bytes(), path
    assert api_key not in repr(res["together"]) and api_key not in str(res["together"])


def test_defs_bundle_loads_as_a_code_location(tmp_path: Path) -> None:
    prompts = make_prompts_asset(reviews_table(1))
    bundle = build(
        str(tmp_path),
        prompts,
        translator=Prefixed(),
        watch=SensorOptions(default_status=dg.DefaultSensorStatus.STOPPED),
    )
    defs = dg.Definitions.merge(
        bundle.defs,
        dg.Definitions(assets=[prompts], resources={"together": TogetherResource()}),
    )
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    assert repo.has_sensor_def("reviews_batch_sensor")
    assert repo.has_job("reviews_results_job")
    assert bundle.sensor is not None and bundle.submit_asset is not None
    assert bundle.sensor.default_status == dg.DefaultSensorStatus.STOPPED
    specs = {spec.key: spec for spec in defs.resolve_all_asset_specs()}
    assert specs[bundle.submit_asset.key].kinds == {"together"}
    results_spec = specs[bundle.results_asset.key]
    assert results_spec.kinds == {"together", "parquet"}
    assert results_spec.group_name == "llm" and results_spec.owners == ["team:ml"]
    # The results location is on the asset's Overview, before any run.
    assert results_spec.metadata["dagster/uri"].value == bundle.layout.results_url
    assert {c.name for c in bundle.results_asset.check_specs} == {"completeness", "error_rate"}


def _source(kind: str, table: pa.Table, tmp_path: Path) -> Any:
    if kind == "pandas":
        return table.to_pandas()
    if kind == "parquet":
        pq.write_table(table, tmp_path / "prompts.parquet")
        return str(tmp_path / "prompts.parquet")
    with open(tmp_path / "prompts.jsonl", "w") as handle:
        for row in table.to_pylist():
            handle.write(json.dumps(row) + "\n")
    return str(tmp_path / "prompts.jsonl")


@pytest.mark.parametrize("kind", ["pandas", "parquet", "jsonl"])
def test_prompts_as_dataframe_or_location(
    emulator: Any, api_key: str, tmp_path: Path, instance: dg.DagsterInstance, kind: str
) -> None:
    value = _source(kind, reviews_table(3), tmp_path)

    @dg.asset(name="reviews")
    def prompts() -> Any:
        return value

    bundle = build(str(tmp_path / "store"), prompts)
    res = resources(emulator, api_key)
    [batch_id] = submit_metadata(submit(bundle, prompts, instance, res), bundle)["batch_ids"]
    columns = pq.read_table(bundle.layout.inputs_parquet(batch_id))
    assert columns["custom_id"].to_pylist() == ["100", "101", "102"]
    assert columns["stars"].to_pylist() == [1, 2, 3]


def test_daily_prompts_submit_per_day(
    emulator: Any, api_key: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    daily = dg.DailyPartitionsDefinition(start_date="2026-01-01")

    @dg.asset(name="reviews", partitions_def=daily)
    def prompts(context: dg.AssetExecutionContext) -> pa.Table:
        day = context.partition_key
        return pa.table({"review_id": [f"{day}-1", f"{day}-2"], "text": ["a", "b"]})

    bundle = build(str(tmp_path / "store"), prompts, submit_partitions_def=daily)
    res = resources(emulator, api_key)
    dg.Definitions.validate_loadable(
        dg.Definitions.merge(bundle.defs, dg.Definitions(assets=[prompts], resources=res))
    )
    ids = []
    for day in ("2026-01-01", "2026-01-02"):
        result = dg.materialize(
            [prompts, bundle.submit_asset], partition_key=day, instance=instance, resources=res
        )
        ids += submit_metadata(result, bundle)["batch_ids"]
    assert len(set(ids)) == 2
    assert sorted(instance.get_dynamic_partitions(bundle.partitions_def.name)) == sorted(ids)


def test_results_step_retries_a_transient_failure(
    emulator: Any, api_key: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    prompts = make_prompts_asset(reviews_table(2))
    bundle = build(
        str(tmp_path / "store"),
        prompts,
        results=ResultsOptions(retry_policy=dg.RetryPolicy(max_retries=1, delay=0)),
    )
    # No HTTP retries in the client: the download's 500 reaches the step, which is retried.
    res = {"together": TogetherResource(api_key=api_key, base_url=emulator.base_url, max_retries=0)}
    [batch_id] = submit_metadata(submit(bundle, prompts, instance, res), bundle)["batch_ids"]
    wait_terminal(emulator, [batch_id])
    emulator.add_fault("GET", r"/content$", kind="status", status=500, times=1)
    result = materialize_results(bundle, batch_id, instance, res)
    assert result.success
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retries) == 1
    assert pq.read_table(bundle.layout.results_parquet(batch_id)).num_rows == 2


def test_every_raw_line_is_kept_when_asked(
    emulator: Any, api_key: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    prompts = make_prompts_asset(reviews_table(2))
    bundle = build(str(tmp_path / "store"), prompts, results=ResultsOptions(raw_responses="all"))
    res = resources(emulator, api_key)
    [batch_id] = submit_metadata(submit(bundle, prompts, instance, res), bundle)["batch_ids"]
    wait_terminal(emulator, [batch_id])
    assert materialize_results(bundle, batch_id, instance, res).success
    written = pq.read_table(bundle.layout.results_parquet(batch_id)).to_pylist()
    assert [json.loads(r["response"])["custom_id"] for r in written] == ["100", "101"]


def test_building_the_pipeline_warns_of_nothing(tmp_path: Path) -> None:
    """A code location that defines the pipeline loads without a warning of ours."""
    import warnings

    prompts = make_prompts_asset(reviews_table(1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build(str(tmp_path), prompts)
        build(str(tmp_path), prompts, watch=WaitOptions())
    assert [str(w.message) for w in caught] == []


@pytest.mark.slow
def test_a_results_run_does_not_import_pandas(tmp_path: Path, emulator: Any, api_key: str) -> None:
    """A results run reads and writes small tables (keys, answers, retryable rows); pyarrow's
    ``read_table``, ``Table.join`` and conversions of Python values import pandas (about 0.4 CPU
    seconds in every run process). The run that completes a submission, and assembles its final
    table, is not covered: it converts to numpy, which imports pandas too."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import sys
        import dagster as dg
        import pyarrow as pa
        from dagster_together import BatchingOptions, TogetherResource, build_together_batch_defs
        from dagster_together.requests import RequestTemplate

        @dg.asset
        def reviews():
            return pa.table({{"id": ["a", "b", "c"], "text": ["good", "bad", "fine"]}})

        bundle = build_together_batch_defs(
            name="reviews", prompts=reviews, storage={str(tmp_path / "store")!r},
            template=RequestTemplate(model="m", prompt_column="text"), id_column="id",
            batching=BatchingOptions(max_requests_per_batch=2),
        )
        res = {{"together": TogetherResource(api_key={api_key!r}, base_url={emulator.base_url!r})}}
        with dg.DagsterInstance.get() as instance:
            if sys.argv[1] == "submit":
                assert dg.materialize([reviews, bundle.submit_asset], instance=instance,
                                      resources=res).success
            else:
                batch_id = sorted(instance.get_dynamic_partitions(bundle.partitions_def.name))[0]
                assert dg.materialize([bundle.results_asset], partition_key=batch_id,
                                      instance=instance, resources=res).success
        print("pandas" in sys.modules)
        """
    )
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}

    def run(phase: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", script, phase],
            capture_output=True,
            text=True,
            env=env,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip().splitlines()[-1]

    run("submit")
    wait_terminal(emulator)
    assert run("results") == "False"
