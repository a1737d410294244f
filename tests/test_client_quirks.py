"""Today's Together service, quirk by quirk: our client against the emulator over real HTTP.

Each test is named for the quirk; the emulator's switch for it is in
:class:`dagster_together.emulator.quirks.Quirks`. docs/reliability.md lists them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dagster_together.client import (
    BadRequestError,
    BatchNotCreatedError,
    BatchStatus,
    FileResponse,
    FileValidationError,
    InvalidRequestFileError,
    NotFoundError,
    TogetherClient,
)
from dagster_together.client.transport import DEFAULT_BASE_URL
from dagster_together.emulator import Emulator
from tests.helpers import content_calls, fast_client, random_jsonl, write_requests


@pytest.fixture
def make_client(api_key: str) -> Iterator[Any]:
    """``make_client(emulator)``: a fast-retrying client on that emulator, closed afterwards."""
    clients: list[TogetherClient] = []

    def make(emu: Emulator, **kwargs: Any) -> TogetherClient:
        client = fast_client(emu, api_key, timeout=5, max_retries=3, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def _emu(api_key: str, **options: Any) -> Emulator:
    """An emulator with a fast clock; ``options`` override it and set the quirk switches."""
    return Emulator(**{"api_key": api_key, "validate_seconds": 0.0, "run_seconds": 0.1, **options})


def test_default_host_is_api_together_ai_and_xyz_still_works(
    monkeypatch: pytest.MonkeyPatch, api_key: str
) -> None:
    monkeypatch.delenv("TOGETHER_BASE_URL", raising=False)
    assert DEFAULT_BASE_URL == "https://api.together.ai/v1"
    with TogetherClient(api_key) as client:
        assert client.base_url == "https://api.together.ai/v1"
    for given in ("https://api.together.xyz", "https://api.together.xyz/v1/"):
        with TogetherClient(api_key, given) as client:
            assert client.base_url == "https://api.together.xyz/v1"


def test_cancel_answers_canceling_then_cancelled(api_key: str, make_client: Any, tmp_path: Path):
    with _emu(api_key, cancel_seconds=0.3, run_seconds=3600) as emu:
        client = make_client(emu)
        file_id = client.files.upload(write_requests(tmp_path / "in.jsonl", 3), check=False).id
        job = client.batches.create_batch(file_id)
        canceling = client.batches.cancel_batch(job.id)
        assert canceling.status is BatchStatus.CANCELING
        assert not canceling.status.is_terminal  # a CANCELING batch is watched until it ends
        assert client.batches.get_batch(job.id).status is BatchStatus.CANCELING
        seen: list[str] = []
        final = client.batches.wait(
            job.id, poll_interval=0.05, on_poll=lambda j: seen.append(j.status)
        )
        assert final.status is BatchStatus.CANCELLED and final.status.is_terminal
        assert seen[0] == "CANCELING" and seen[-1] == "CANCELLED"
        # Cancelling again while CANCELLED answers the job, as the service does.
        assert client.batches.cancel_batch(job.id).status is BatchStatus.CANCELLED


def test_empty_batch_list_is_null(api_key: str, make_client: Any) -> None:
    with _emu(api_key) as emu:
        raw = httpx.get(f"{emu.base_url}/batches", headers={"Authorization": f"Bearer {api_key}"})
        assert raw.status_code == 200 and raw.content == b"null"  # what the live service sends
        assert make_client(emu).batches.list_batches() == []
    with _emu(api_key, null_empty_list=False) as emu:  # the documented form works too
        assert make_client(emu).batches.list_batches() == []


def test_create_answered_job_null_with_warning_is_batch_not_created_error(
    api_key: str, make_client: Any, tmp_path: Path
) -> None:
    with _emu(api_key, unbatched_models=["vendor/not-for-batch"]) as emu:
        client = make_client(emu)
        path = write_requests(tmp_path / "in.jsonl", 2, model="vendor/not-for-batch")
        file_id = client.files.upload(path, check=False).id
        emu.clear_requests()
        with pytest.raises(BatchNotCreatedError) as info:
            client.batches.create_batch(file_id)
        error = info.value
        assert error.warning and "vendor/not-for-batch" in error.warning
        assert error.warning in str(error)
        assert "no batch" in str(error).lower() and "model" in str(error)
        # Never retried, nothing looked up, nothing created.
        assert [(r.method, r.path) for r in emu.requests] == [("POST", "/v1/batches")]
        assert emu.batches() == []
        # A served model on the same emulator still works.
        served = client.files.upload(write_requests(tmp_path / "ok.jsonl", 2), check=False).id
        assert client.batches.create_batch(served).status is BatchStatus.VALIDATING


@pytest.mark.parametrize(
    ("honour_range", "statuses"),
    [(False, [200, 200]), (True, [200, 206])],
    ids=["content served without Range restarts from 0", "Range honoured resumes"],
)
def test_content_served_without_range_restarts_from_zero(
    api_key: str, make_client: Any, tmp_path: Path, honour_range: bool, statuses: list[int]
) -> None:
    data = random_jsonl(3_000_000, seed=7)
    with _emu(api_key, honour_range=honour_range) as emu:
        file_id = emu.add_file(data)
        probe = httpx.head(
            f"{emu.base_url}/files/{file_id}/content",
            headers={"Authorization": f"Bearer {api_key}"},
        )
        assert ("accept-ranges" in probe.headers) is honour_range
        emu.clear_requests()
        emu.add_fault(method="GET", path=r"/content$", kind="drop", after_bytes=1_000_000)
        out = make_client(emu).files.retrieve_content(file_id, output=tmp_path / "out.jsonl")
        assert (tmp_path / "out.jsonl").read_bytes() == data and out.size == len(data)
        first, second = content_calls(emu)
    # The second request asks for the rest; a server that ignores Range sends it all again.
    assert second.headers.get("range") == "bytes=1000000-"
    assert [first.status, second.status] == statuses


@pytest.mark.parametrize("string_form", [True, False], ids=["string form", "object form"])
def test_string_form_batch_errors_map_to_the_same_exceptions(
    api_key: str, make_client: Any, string_form: bool
) -> None:
    with _emu(api_key, string_batch_errors=string_form) as emu:
        client = make_client(emu)
        with pytest.raises(NotFoundError) as missing_batch:
            client.batches.get_batch("00000000-0000-0000-0000-000000000000")
        with pytest.raises(BadRequestError) as bad_create:
            client.batches.create_batch("file-x", endpoint="/v1/embeddings")
        with pytest.raises(NotFoundError) as missing_file:  # files: always the object form
            client.files.retrieve("file-missing")
        bodies = {r.path: r.status for r in emu.requests}
        assert bodies["/v1/batches"] == 400
    # The server's own message is in each error, whatever the body's form.
    assert "00000000-0000-0000-0000-000000000000 not found" in missing_batch.value.message
    assert isinstance(missing_batch.value.body, dict)
    assert isinstance(missing_batch.value.body["error"], str) is string_form
    assert "'endpoint' must be one of" in bad_create.value.message
    assert "File file-missing not found" in missing_file.value.message
    assert isinstance(missing_file.value.body["error"], dict)


def test_upload_rejected_by_validation_report_raises(
    api_key: str, make_client: Any, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"custom_id": "a", "body": {"model": "m"}}) + "\n" + '{"oops": 1}\n')
    with _emu(api_key, validate_uploads=True) as emu:
        client = make_client(emu)
        with pytest.raises(FileValidationError) as info:
            client.files.upload(bad, check=False)  # our own check off: the service's check runs
        error = info.value
        assert isinstance(error, InvalidRequestFileError)
        assert error.report is not None and error.report["valid"] is False
        assert error.report["error_type"] == "INVALID_FORMAT" and error.report["nlines"] == 2
        assert error.processing_status == "INVALID_FORMAT"
        assert "Line 2" in str(error) and "bad.jsonl" in str(error) and error.file_id in str(error)
        assert emu.batches() == []
        good = client.files.upload(write_requests(tmp_path / "good.jsonl", 2), check=False)
        assert good.validation_report == {"file_id": good.id, "valid": True, "nlines": 2}
        assert good.processing_status == "COMPLETED" and not good.is_invalid


def test_unknown_file_fields_and_statuses_are_tolerated() -> None:
    data = {
        "id": "file-1",
        "object": "file",
        "purpose": "batch-api",
        "processing_status": "SOMETHING_NEW",
        "validation_report": {"valid": True, "nlines": 3, "dataset_format": "X", "new": [1]},
        "brand_new_field": {"x": 1},
    }
    parsed = FileResponse.from_api(data)
    assert parsed.processing_status == "SOMETHING_NEW" and not parsed.is_invalid
    assert parsed.validation_report is not None and parsed.validation_report["new"] == [1]
    assert parsed.raw["brand_new_field"] == {"x": 1}


def test_output_purposes_the_client_does_not_know_do_not_crash(
    api_key: str, make_client: Any, tmp_path: Path
) -> None:
    with _emu(api_key) as emu:
        client = make_client(emu)
        job = client.batches.create_batch(
            client.files.upload(write_requests(tmp_path / "in.jsonl", 2), check=False).id
        )
        done = client.batches.wait(job.id, poll_interval=0.05)
        odd = emu.add_file(b"{}\n", purpose="a-purpose-from-2027")
        purposes = {f.id: f.purpose for f in client.files.list()}
        assert purposes[done.output_file_id] == "batch-generated"
        assert purposes[odd] == "a-purpose-from-2027"
        assert client.files.retrieve(odd).purpose == "a-purpose-from-2027"
        assert job.input_file_id and purposes[job.input_file_id] == "batch-api"


AUDIO_LINE = {"model": "openai/whisper-large-v3", "file": "https://example.com/a.mp3"}


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/audio/transcriptions", AUDIO_LINE),
        ("/v1/audio/translations", AUDIO_LINE),
        ("/v1/completions", {"model": "m", "prompt": "hi"}),  # SDK 1.x only; still accepted
    ],
)
def test_every_batch_endpoint_is_accepted(
    api_key: str, make_client: Any, tmp_path: Path, endpoint: str, body: dict[str, Any]
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"custom_id": "a", "body": body}) + "\n")
    with _emu(api_key) as emu:
        client = make_client(emu)
        job = client.batches.create_batch(
            client.files.upload(path, check=False).id, endpoint=endpoint
        )
        done = client.batches.wait(job.id, poll_interval=0.05)
        assert done.status is BatchStatus.COMPLETED and done.endpoint == endpoint
        out = client.files.retrieve_content(done.output_file_id, output=tmp_path / "out.jsonl")
        [line] = Path(out.filename).read_text().splitlines()
        assert json.loads(line)["response"]["status_code"] == 200


def test_wait_logs_each_change_once(api_key: str, make_client: Any, tmp_path: Path, caplog) -> None:
    with _emu(api_key, validate_seconds=0.05, run_seconds=0.15) as emu:
        client = make_client(emu)
        job = client.batches.create_batch(
            client.files.upload(write_requests(tmp_path / "in.jsonl", 2), check=False).id
        )
        polls: list[Any] = []
        with caplog.at_level(logging.INFO, logger="dagster_together.client"):
            done = client.batches.wait(job.id, poll_interval=0.01, on_poll=polls.append)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Batch ")]
    assert done.status is BatchStatus.COMPLETED and polls[-1] == done
    assert len(polls) > len(lines) >= 2  # many polls, a line only when something changed
    assert (
        lines[0].startswith(f"Batch {job.id}: VALIDATING") and "COMPLETED, 100% done" in lines[-1]
    )
