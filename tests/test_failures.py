"""Errors a person can act on: inside a run, what goes wrong reaches the UI as one ``dg.Failure``
whose first line is our message in the user's terms (the setting to fix, their storage URL),
with the original exception kept below it; and nothing is sent to Together when the storage
cannot take the inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa

from dagster_together import TogetherResource, build_together_batch_defs
from dagster_together.requests import RequestTemplate

TEMPLATE = RequestTemplate(model="m", prompt_column="text")


@dg.asset(name="prompts")
def prompts() -> pa.Table:
    return pa.table({"id": ["a", "b"], "text": ["one", "two"]})


def _submit(storage: str, resource: TogetherResource, instance: Any) -> dg.ExecuteInProcessResult:
    bundle = build_together_batch_defs(
        name="docs", prompts=prompts, storage=storage, template=TEMPLATE, id_column="id"
    )
    return dg.materialize(
        [prompts, bundle.submit_asset],
        instance=instance,
        resources={"together": resource},
        raise_on_error=False,
    )


def _failure(result: dg.ExecuteInProcessResult) -> tuple[str, list[str]]:
    """The step failure's first message and the class names of the chain below it."""
    [failure] = result.get_step_failure_events()
    error = failure.event_specific_data.error
    first, causes = error.message, []
    while error.cause is not None:
        error = error.cause
        causes.append(error.cls_name)
    return first, causes


def test_a_wrong_api_key_says_which_setting_to_fix(
    emulator: Any, api_key: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    wrong = TogetherResource(api_key="not-the-key", base_url=emulator.base_url)
    result = _submit(str(tmp_path / "store"), wrong, instance)
    assert not result.success
    first, causes = _failure(result)
    first_line = first.splitlines()[0]
    assert "Submitting docs_batches: Together rejected the API key (401)" in first_line
    assert first_line.count("TOGETHER_API_KEY") == 1
    assert causes == ["AuthenticationError"]  # kept below, once
    assert "not-the-key" not in first


def test_unwritable_storage_is_found_before_anything_is_sent(
    emulator: Any, api_key: str, instance: dg.DagsterInstance
) -> None:
    resource = TogetherResource(api_key=api_key, base_url=emulator.base_url)
    result = _submit("/proc/dagster-together-cannot-write-here", resource, instance)
    assert not result.success
    first, _ = _failure(result)
    assert "Cannot write to storage_url='/proc/dagster-together-cannot-write-here'" in first
    assert "Nothing was sent to Together" in first
    assert emulator.requests == []


def test_s3_without_credentials_names_the_setting_and_sends_nothing(
    emulator: Any,
    api_key: str,
    instance: dg.DagsterInstance,
    s3_server: Any,
    monkeypatch: Any,
) -> None:
    # A bucket on the moto server, reached with credentials it does not know.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "nothing")
    bucket = "s3://no-such-bucket-for-dagster-together"
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    resource = TogetherResource(api_key=api_key, base_url=emulator.base_url)
    result = _submit(f"{bucket}/docs", resource, instance)
    assert not result.success
    first, _ = _failure(result)
    assert f"Cannot write to storage_url='{bucket}/docs'" in first
    assert emulator.requests == []
