"""TogetherResource: a cached client usable in and outside runs, configured from fields or the
environment, with the key kept out of every repr, log and event."""

import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from dagster_together.resources import TogetherResource


def _request_file(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text(
        '{"custom_id": "a", "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}\n'
    )
    return path


def test_files_and_batches_work_outside_a_run(emulator: Any, api_key: str, tmp_path: Path) -> None:
    together = TogetherResource(api_key=api_key, base_url=emulator.base_url)
    uploaded = together.files.upload(_request_file(tmp_path))
    job = together.batches.create_batch(uploaded.id)
    assert [b.id for b in together.batches.list_batches()] == [job.id]
    assert together.get_client() is together.get_client()  # one client, one connection pool


def test_env_var_key_and_base_url_resolve_outside_a_run(
    emulator: Any, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_TOGETHER_KEY", api_key)
    monkeypatch.setenv("TOGETHER_BASE_URL", emulator.host_url)  # host only: /v1 is added
    together = TogetherResource(api_key=dg.EnvVar("MY_TOGETHER_KEY"))
    assert together.get_client().base_url == emulator.base_url
    assert together.batches.list_batches() == []  # 200, not 401: the value was sent, not the name


def test_defaults_come_from_the_environment(
    emulator: Any, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOGETHER_API_KEY", api_key)
    monkeypatch.setenv("TOGETHER_BASE_URL", emulator.base_url)
    assert TogetherResource().batches.list_batches() == []
    monkeypatch.delenv("TOGETHER_BASE_URL")
    assert TogetherResource().get_client().base_url == "https://api.together.ai/v1"


def test_make_client_overrides_and_is_not_cached(api_key: str) -> None:
    together = TogetherResource(api_key=api_key, base_url="http://127.0.0.1:9/v1", timeout=30.0)
    with together.make_client(timeout=2.0, max_retries=0) as client:
        assert client.transport.timeout == 2.0 and client.transport.max_retries == 0
        assert client is not together.get_client()
    assert together.get_client().transport.timeout == 30.0


def test_key_never_in_repr_str_or_run_events(emulator: Any, api_key: str) -> None:
    together = TogetherResource(api_key=api_key, base_url=emulator.base_url)
    for text in (repr(together), str(together), repr(together.get_client()), repr(together.files)):
        assert api_key not in text

    @dg.asset
    def batch_count(context: dg.AssetExecutionContext, together: TogetherResource) -> int:
        jobs = together.batches.list_batches()
        context.log.info(f"client: {together.get_client()!r}, resource: {together!r}")
        return len(jobs)

    with dg.instance_for_test() as instance:
        result = dg.materialize([batch_count], instance=instance, resources={"together": together})
        assert result.success and result.output_for_node("batch_count") == 0
        for event in result.all_events:
            assert api_key not in repr(event)
        for record in instance.get_records_for_run(result.run_id).records:
            assert api_key not in repr(record.event_log_entry)


def test_client_is_closed_after_a_run(emulator: Any, api_key: str) -> None:
    seen: list[Any] = []

    @dg.asset
    def uses_client(together: TogetherResource) -> None:
        seen.append(together.get_client())
        together.batches.list_batches()

    together = TogetherResource(api_key=api_key, base_url=emulator.base_url)
    assert dg.materialize([uses_client], resources={"together": together}).success
    with pytest.raises(RuntimeError):  # httpx refuses requests on a closed client
        seen[0].batches.list_batches()


def test_missing_key_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster_together.client import AuthenticationError

    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    with pytest.raises(AuthenticationError, match="TOGETHER_API_KEY"):
        TogetherResource().get_client()


@pytest.mark.slow  # a fresh interpreter importing dagster
def test_importing_the_dagster_modules_stays_light() -> None:
    """Loading a code location must not pay for httpx, pyarrow, fsspec or s3fs."""
    code = (
        "import sys, dagster_together.resources, dagster_together.assets, "
        "dagster_together.sensors, dagster_together.storage; "
        "print(sorted(m for m in ('httpx', 'pyarrow', 'fsspec', 's3fs', 'pandas') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
