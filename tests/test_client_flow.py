"""The plain-Python flow of the README, and waiting for a batch, over real HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dagster_together.client import (
    BatchJob,
    BatchStatus,
    BatchWaitTimeout,
    ClientSettings,
    Retries,
    TogetherClient,
    TogetherError,
)
from dagster_together.client import batches as batches_module
from tests.helpers import fast_client, write_requests

# The README's plain-Python flow, exactly as a user pastes it.
README_FLOW = """
client = TogetherClient()
f = client.files.upload("requests.jsonl")
job = client.batches.create_batch(f.id)
job = client.batches.wait(job.id)
out = client.files.retrieve_content(job.output_file_id, output="out.jsonl")
"""


def test_readme_flow_runs_as_pasted(
    emulator: Any, api_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOGETHER_API_KEY", api_key)
    monkeypatch.setenv("TOGETHER_BASE_URL", emulator.base_url)
    # wait()'s default first pause is 1 s, for a batch that takes 0.12 s here; only the pause
    # shrinks, the pasted code is unchanged.
    monkeypatch.setattr(batches_module, "_FIRST_POLL", 0.05)
    write_requests(tmp_path / "requests.jsonl", 4, prompt="What is {i}?")
    scope: dict[str, Any] = {"TogetherClient": TogetherClient}
    exec(README_FLOW, scope)
    scope["client"].close()
    job, out = scope["job"], scope["out"]
    assert job.status is BatchStatus.COMPLETED
    assert out.filename == str(tmp_path / "out.jsonl") and out.size > 0
    answers = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(a["custom_id"] for a in answers) == ["r0", "r1", "r2", "r3"]


def test_wait_timeout_says_the_batch_still_runs(
    slow_emu: Any, api_key: str, tmp_path: Path
) -> None:
    with fast_client(slow_emu, api_key, timeout=5, max_retries=1) as client:
        file_id = client.files.upload(write_requests(tmp_path / "in.jsonl", 2), check=False).id
        job = client.batches.create_batch(file_id)
        with pytest.raises(BatchWaitTimeout) as info:
            client.batches.wait(job.id, poll_interval=0.05, timeout=0.3)
    error = info.value
    assert isinstance(error, TogetherError)
    assert error.batch_id == job.id and error.status == "IN_PROGRESS"
    assert error.job is not None and error.job.id == job.id
    assert "still IN_PROGRESS" in str(error) and "not cancelled" in str(error)
    # Not cancelled: no cancel request was sent and the batch still runs.
    assert not [r for r in slow_emu.requests if r.path.endswith("/cancel")]
    assert [b["status"] for b in slow_emu.batches()] == ["IN_PROGRESS"]


def test_wait_logs_to_a_given_logger_and_treats_canceling_as_running(
    api_key: str, tmp_path: Path
) -> None:
    from dagster_together.emulator import Emulator

    class Sink:
        def __init__(self) -> None:
            self.lines: list[str] = []

        def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
            self.lines.append(msg % args if args else msg)

    with (
        Emulator(api_key=api_key, validate_seconds=0, run_seconds=3600, cancel_seconds=0.3) as emu,
        fast_client(emu, api_key, timeout=5, max_retries=1) as client,
    ):
        file_id = client.files.upload(write_requests(tmp_path / "in.jsonl", 2), check=False).id
        job = client.batches.create_batch(file_id)
        client.batches.cancel_batch(job.id)
        sink = Sink()
        final = client.batches.wait(job.id, poll_interval=0.05, logger=sink)
    assert final.status is BatchStatus.CANCELLED
    assert [line.split(": ")[1].split(",")[0] for line in sink.lines] == ["CANCELING", "CANCELLED"]


def test_retrieve_content_of_none_says_to_wait(emulator: Any, api_key: str) -> None:
    with fast_client(emulator, api_key, timeout=5, max_retries=0) as client:
        with pytest.raises(ValueError, match=r"no output file yet.*client\.batches\.wait"):
            client.files.retrieve_content(None, output="never.jsonl")
    assert emulator.requests == []


def test_settings_typed_and_keyword_forms(api_key: str, caplog: pytest.LogCaptureFixture) -> None:
    typed = TogetherClient(
        api_key,
        "http://t",
        settings=ClientSettings(timeout=2.0, verify_tls=False),
        retries=Retries(max_retries=1, backoff_base=0.1),
    )
    assert typed.settings == ClientSettings(
        timeout=2.0, retries=Retries(max_retries=1, backoff_base=0.1), verify_tls=False
    )
    assert typed.transport.timeout == 2.0 and typed.transport.max_retries == 1
    # The resource's call: the simple keyword form, unchanged.
    simple = TogetherClient(
        api_key,
        "http://t",
        timeout=3.0,
        max_retries=0,
        verify_tls=True,
        retry_after_max=5.0,
    )
    assert simple.settings == ClientSettings(
        timeout=3.0, retries=Retries(max_retries=0, retry_after_max=5.0)
    )
    # A keyword overrides the typed value it names, and only that one.
    mixed = TogetherClient(api_key, "http://t", retries=Retries(max_retries=4), backoff_max=1.0)
    assert mixed.settings.retries == Retries(max_retries=4, backoff_max=1.0)
    assert TogetherClient(api_key, "http://t").settings == ClientSettings()
    for client in (typed, simple, mixed):
        assert api_key not in repr(client) + repr(client.settings) + repr(client.transport)
        client.close()
    with pytest.raises(ValueError, match="max_retries"):
        Retries(max_retries=-1)
    with pytest.raises(ValueError, match="timeout"):
        ClientSettings(timeout=0)


def test_wait_default_poll_backs_off(api_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import dagster_together.client.batches as batches_module

    pauses: list[float] = []
    statuses = iter(["VALIDATING"] * 12 + ["COMPLETED"])
    monkeypatch.setattr(
        batches_module.Batches,
        "get_batch",
        lambda self, id: BatchJob(id=id, status=BatchStatus(next(statuses))),
    )
    monkeypatch.setattr(batches_module.time, "sleep", pauses.append)
    with TogetherClient(api_key, "http://t") as client:
        assert client.batches.wait("b").status is BatchStatus.COMPLETED
    # 1 s, then half as long again each poll, never over 30 s.
    assert pauses[:3] == [1.0, 1.5, 2.25] and max(pauses) == 30.0 and pauses == sorted(pauses)
