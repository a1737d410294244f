"""The answer cache across runs: a request answered once is never paid again. The daily case runs
end to end: a prompts table that grows by 1% a day, submitted by a schedule, sends only the new
1% on the second day (the emulator's received request lines prove it), and the second day's
final table still has every row, the cached ones marked with the batch that paid for them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dagster_together import (
    ResubmitOptions,
    ResultsOptions,
    TogetherResource,
    WaitOptions,
    build_together_batch_defs,
)
from dagster_together.answers import request_key
from dagster_together.requests import RequestTemplate
from dagster_together.submissions import Submissions
from tests.helpers import wait_terminal

TEMPLATE = RequestTemplate(model="m", prompt_column="text", system_prompt="Be brief.")
DAY_ONE = 200


def _received_lines(emu: Any) -> list[str]:
    """Every custom_id the emulator received, over every batch."""
    return [
        json.loads(line)["custom_id"]
        for batch in emu.batches()
        for line in emu.file_content(batch["input_file_id"]).splitlines()
        if line.strip()
    ]


def test_key_follows_the_content_not_the_id() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    same = {"max_tokens": 5, "messages": [{"content": "hi", "role": "user"}], "model": "m"}
    assert request_key("/v1/chat/completions", body) == request_key("/v1/chat/completions", same)
    for changed in (
        {**body, "model": "other"},
        {**body, "max_tokens": 6},
        {**body, "messages": [{"role": "system", "content": "x"}, *body["messages"]]},
    ):
        assert request_key("/v1/chat/completions", changed) != request_key(
            "/v1/chat/completions", body
        )


def test_a_table_growing_one_percent_a_day_sends_only_the_new_rows(
    emulator: Any, api_key: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    rows = {"n": DAY_ONE}

    @dg.asset(name="prompts")
    def prompts() -> pa.Table:
        n = rows["n"]
        return pa.table({"id": [f"r{i}" for i in range(n)], "text": [f"row {i}" for i in range(n)]})

    daily = build_together_batch_defs(
        name="daily",
        prompts=prompts,
        storage=str(tmp_path / "store"),
        template=TEMPLATE,
        id_column="id",
        watch=WaitOptions(poll_interval=0.05),
    )
    job = dg.define_asset_job("daily_job", selection=[prompts, daily.results_asset])
    schedule = dg.ScheduleDefinition(job=job, cron_schedule="0 6 * * *")
    defs = dg.Definitions.merge(
        daily.defs,
        dg.Definitions(
            assets=[prompts],
            jobs=[job],
            schedules=[schedule],
            resources={"together": TogetherResource(api_key=api_key, base_url=emulator.base_url)},
        ),
    )

    def scheduled_run() -> dg.AssetMaterialization:
        with dg.build_schedule_context(instance=instance) as context:
            [request] = schedule.evaluate_tick(context).run_requests or []
        result = defs.resolve_job_def("daily_job").execute_in_process(
            instance=instance, tags=request.tags
        )
        assert result.success
        [mat] = result.asset_materializations_for_node("daily_results")
        return mat

    first = scheduled_run()
    assert len(_received_lines(emulator)) == DAY_ONE
    assert first.metadata["together/n_cached"].value == 0

    rows["n"] = DAY_ONE + DAY_ONE // 100  # the table grew by 1% overnight
    second = scheduled_run()
    received = _received_lines(emulator)
    assert received[DAY_ONE:] == ["r200", "r201"]  # day two sent only the two new rows
    assert second.metadata["together/n_cached"].value == DAY_ONE
    final = pq.read_table(second.metadata["dagster/uri"].value)
    assert final["id"].to_pylist() == [f"r{i}" for i in range(DAY_ONE + 2)]
    assert final["status"].to_pylist() == ["succeeded"] * (DAY_ONE + 2)
    assert final["cached"].to_pylist() == [True] * DAY_ONE + [False, False]
    first_batch = first.metadata["together/batch_ids"].value[0]  # type: ignore[index]
    assert set(final["batch_id"].to_pylist()[:DAY_ONE]) == {first_batch}  # who paid for them


def test_a_changed_prompt_sends_again_and_no_cache_still_reuses_the_batch(
    emulator: Any, api_key: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    @dg.asset(name="prompts")
    def prompts() -> pa.Table:
        return pa.table({"id": ["a", "b"], "text": ["one", "two"]})

    res = {"together": TogetherResource(api_key=api_key, base_url=emulator.base_url)}

    def run(template: RequestTemplate, resubmit: ResubmitOptions) -> None:
        bundle = build_together_batch_defs(
            name="docs",
            prompts=prompts,
            storage=str(tmp_path / "store"),
            template=template,
            id_column="id",
            resubmit=resubmit,
            watch=WaitOptions(poll_interval=0.05),
        )
        assert dg.materialize(
            [prompts, bundle.results_asset], instance=instance, resources=res
        ).success

    run(TEMPLATE, ResubmitOptions())
    run(TEMPLATE, ResubmitOptions())  # all cached: nothing sent
    assert len(_received_lines(emulator)) == 2
    run(
        RequestTemplate(model="m", prompt_column="text", system_prompt="Be long."),
        ResubmitOptions(),
    )
    assert len(_received_lines(emulator)) == 4  # another system prompt, other keys
    # Without the store the same request file is built again: Together gives back the same
    # file id, and the batch already made on it is reused (never billed twice either way).
    run(TEMPLATE, ResubmitOptions(use_answer_cache=False))
    assert len(_received_lines(emulator)) == 4


def test_crash_between_follow_up_create_and_record_makes_no_second_follow_up(
    emulator: Any,
    api_key: str,
    tmp_path: Path,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    @dg.asset(name="prompts")
    def prompts() -> pa.Table:
        return pa.table({"id": ["a", "b"], "text": ["fine", "EMULATE_ERROR_ONCE:server_error"]})

    bundle = build_together_batch_defs(
        name="docs",
        prompts=prompts,
        storage=str(tmp_path / "store"),
        template=TEMPLATE,
        id_column="id",
        results=ResultsOptions(retry_policy=None),  # the crash ends the run
    )
    res = {"together": TogetherResource(api_key=api_key, base_url=emulator.base_url)}
    submitted = dg.materialize([prompts, bundle.submit_asset], instance=instance, resources=res)
    [mat] = submitted.asset_materializations_for_node("docs_batches")
    [batch_id] = mat.metadata["together/batch_ids"].value  # type: ignore[misc]
    wait_terminal(emulator, [batch_id])

    # The follow-up's record cannot be written once, right after its batch was created.
    real_record = Submissions.record
    calls = {"n": 0}

    def crash_on_follow_up(self: Submissions, record: Any) -> None:
        if record.attempt == 2 and calls["n"] == 0:
            calls["n"] += 1
            raise OSError("simulated crash after the follow-up's create")
        real_record(self, record)

    monkeypatch.setattr(Submissions, "record", crash_on_follow_up)
    crashed = dg.materialize(
        [bundle.results_asset],
        partition_key=batch_id,
        instance=instance,
        resources=res,
        raise_on_error=False,
    )
    assert not crashed.success
    assert len(emulator.batches()) == 2  # the batch and its follow-up, paid for
    # Run again: the same rows give the same file, whose batch is reused.
    again = dg.materialize(
        [bundle.results_asset], partition_key=batch_id, instance=instance, resources=res
    )
    assert again.success
    assert len(emulator.batches()) == 2
    posts = [r for r in emulator.requests if (r.method, r.path) == ("POST", "/v1/batches")]
    assert len(posts) == 2


def test_the_answer_store_on_s3_answers_a_second_submission(
    emulator: Any,
    api_key: str,
    instance: dg.DagsterInstance,
    s3_server: Any,
    s3_bucket: str,
) -> None:
    from dagster_together import BatchStorageLayout

    @dg.asset(name="prompts")
    def prompts() -> pa.Table:
        return pa.table({"id": ["a", "b", "c"], "text": ["one", "two", "three"]})

    layout = BatchStorageLayout(f"{s3_bucket}/together", s3_server.storage_options)
    bundle = build_together_batch_defs(
        name="docs",
        prompts=prompts,
        storage=layout,
        template=TEMPLATE,
        id_column="id",
        watch=WaitOptions(poll_interval=0.05),
    )
    res = {"together": TogetherResource(api_key=api_key, base_url=emulator.base_url)}
    first = dg.materialize([prompts, bundle.results_asset], instance=instance, resources=res)
    second = dg.materialize([prompts, bundle.results_asset], instance=instance, resources=res)
    assert first.success and second.success
    assert len(_received_lines(emulator)) == 3  # the second run sent nothing
    [mat] = second.asset_materializations_for_node("docs_results")
    assert mat.metadata["together/n_cached"].value == 3
    uri = str(mat.metadata["dagster/uri"].value)
    assert uri.startswith(f"{s3_bucket}/together/final/submission=")
    fs, path = layout.filesystem(uri)
    with fs.open(path, "rb") as handle:
        final = pq.read_table(handle)
    assert final["cached"].to_pylist() == [True, True, True]
