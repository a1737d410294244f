"""Results that load downstream: an asset that takes ``<name>_results`` as a parameter receives the
joined table (one partition, several, or all of them), as pyarrow or pandas, from local disk or
S3 (moto), without knowing where the Parquet lives; the same for the asset that waits in its run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow as pa
import pytest

from dagster_together import (
    BatchingOptions,
    BatchStorageLayout,
    TogetherResource,
    WaitOptions,
    build_together_batch_defs,
)
from dagster_together.requests import RequestTemplate
from tests.helpers import wait_terminal

TEMPLATE = RequestTemplate(model="m", prompt_column="text")


def _prompts(n: int) -> dg.AssetsDefinition:
    @dg.asset(name="prompts")
    def prompts() -> pa.Table:
        return pa.table({"id": [f"p{i}" for i in range(n)], "text": [f"say {i}" for i in range(n)]})

    return prompts


def _submitted(
    storage: str | BatchStorageLayout, emulator: Any, api_key: str, instance: Any, n: int
) -> tuple[Any, dict[str, Any], list[str]]:
    prompts = _prompts(n)
    bundle = build_together_batch_defs(
        name="docs",
        prompts=prompts,
        storage=storage,
        template=TEMPLATE,
        id_column="id",
        batching=BatchingOptions(max_requests_per_batch=2),
    )
    res = {"together": TogetherResource(api_key=api_key, base_url=emulator.base_url)}
    submitted = dg.materialize([prompts, bundle.submit_asset], instance=instance, resources=res)
    [mat] = submitted.asset_materializations_for_node(bundle.submit_asset.node_def.name)
    ids = list(mat.metadata["together/batch_ids"].value)
    wait_terminal(emulator, ids)
    for batch_id in ids:
        dg.materialize(
            [bundle.results_asset], partition_key=batch_id, instance=instance, resources=res
        )
    return bundle, res, ids


@pytest.mark.parametrize("where", ["local", "s3"])
def test_downstream_asset_receives_every_partition_as_one_table(
    where: str,
    emulator: Any,
    api_key: str,
    tmp_path: Path,
    instance: dg.DagsterInstance,
    request: pytest.FixtureRequest,
) -> None:
    if where == "s3":
        s3 = request.getfixturevalue("s3_server")
        storage: str | BatchStorageLayout = BatchStorageLayout(
            f"{request.getfixturevalue('s3_bucket')}/docs", s3.storage_options
        )
    else:
        storage = str(tmp_path / "store")
    bundle, res, ids = _submitted(storage, emulator, api_key, instance, n=5)
    seen: dict[str, Any] = {}

    @dg.asset
    def summary(docs_results: pa.Table) -> None:
        seen["table"] = docs_results

    dg.materialize(
        [bundle.results_asset, summary], selection=[summary], instance=instance, resources=res
    )
    table = seen["table"]
    assert isinstance(table, pa.Table)
    assert sorted(table["custom_id"].to_pylist()) == [f"p{i}" for i in range(5)]
    assert sorted(set(table["batch_id"].to_pylist())) == sorted(ids)
    assert set(table["status"].to_pylist()) == {"succeeded"}


def test_one_partition_or_a_range_of_them_and_pandas(
    emulator: Any, api_key: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    bundle, res, ids = _submitted(str(tmp_path / "store"), emulator, api_key, instance, n=5)
    seen: dict[str, Any] = {}

    @dg.asset(partitions_def=bundle.partitions_def)
    def per_batch(docs_results: pd.DataFrame) -> None:
        seen["frame"] = docs_results

    dg.materialize(
        [bundle.results_asset, per_batch],
        selection=[per_batch],
        partition_key=ids[0],
        instance=instance,
        resources=res,
    )
    frame = seen["frame"]
    assert isinstance(frame, pd.DataFrame)
    assert list(frame["batch_id"].unique()) == [ids[0]] and len(frame) == 2


def test_waiting_asset_loads_the_batches_of_its_latest_run(
    emulator: Any, api_key: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    prompts = _prompts(3)
    bundle = build_together_batch_defs(
        name="quick",
        prompts=prompts,
        storage=str(tmp_path / "store"),
        template=TEMPLATE,
        id_column="id",
        watch=WaitOptions(poll_interval=0.05),
    )
    assert bundle.sensor is None and bundle.submit_asset is None
    seen: dict[str, Any] = {}

    @dg.asset
    def summary(quick_results: pa.Table) -> None:
        seen["table"] = quick_results

    res = {"together": TogetherResource(api_key=api_key, base_url=emulator.base_url)}
    result = dg.materialize(
        [prompts, bundle.results_asset, summary], instance=instance, resources=res
    )
    assert result.success
    assert sorted(seen["table"]["custom_id"].to_pylist()) == ["p0", "p1", "p2"]


def test_a_partition_without_results_is_named_and_the_rest_loads(
    emulator: Any, api_key: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    bundle, res, ids = _submitted(str(tmp_path / "store"), emulator, api_key, instance, n=3)
    instance.add_dynamic_partitions(bundle.partitions_def.name, ["not-collected-yet"])
    seen: dict[str, Any] = {}

    @dg.asset
    def summary(docs_results: pa.Table) -> None:
        seen["table"] = docs_results

    result = dg.materialize(
        [bundle.results_asset, summary], selection=[summary], instance=instance, resources=res
    )
    assert seen["table"].num_rows == 3
    messages = [e.message for e in instance.all_logs(result.run_id)]
    assert any("have no results yet" in m and "not-collected-yet" in m for m in messages)
