"""The official ``together`` 3.1.1 SDK, unchanged, against the emulator.

This is the proof that the emulator speaks the real wire format. Where the SDK and
TOGETHER_API.md disagree the SDK wins; the points where that mattered:

* SDK 3.x retries a 409 twice (its "lock timeout" rule) before reading ``{"file_id"}`` from
  it; the emulator adds ``x-should-retry: false`` to that 409, which the SDK honours.
* SDK 3.x's ``FilePurpose`` type lists no ``batch-generated``, yet outputs come back with it;
  the SDK parses answers leniently, so listing and retrieving output files still works.
* SDK 3.x's ``endpoint`` type lists no ``/v1/completions``; the emulator accepts it anyway
  (SDK 1.x used it).
* The live service's quirks, which the emulator copies by default: a cancel answers
  ``CANCELING`` (not in SDK 3.x's status type; it parses leniently and keeps the string) before
  ``CANCELLED``, and ``GET /batches`` answers ``null`` for an account without batches, which
  SDK 3.x hands back as ``None`` rather than ``[]``.

Together 1.5.x and 2.x share the package name; they run in their own virtual environments in
tests/test_emulator_sdk_lines.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from together import AuthenticationError, BadRequestError, NotFoundError, Together

from dagster_together.emulator import Emulator

N = 12


@pytest.fixture
def emu():
    with Emulator(
        api_key="k",
        validate_seconds=0.05,
        # Long enough that a poll every 50 ms sees IN_PROGRESS even on a busy machine.
        run_seconds=0.6,
        cancel_seconds=0.15,
        fail_pattern=r"-fail$",
    ) as e:
        yield e


@pytest.fixture
def client(emu: Emulator) -> Together:
    # SDK 3.x takes the host only and puts /v1 in every path.
    return Together(api_key="k", base_url=emu.host_url)


@pytest.fixture
def input_file(tmp_path: Path) -> Path:
    path = tmp_path / "requests.jsonl"
    with path.open("w") as f:
        for i in range(N):
            text = (
                f"Classify the sentiment of: I love product {i}" if i % 2 else f"What is {i} + {i}?"
            )
            if i == 5:
                text = "EMULATE_ERROR on purpose"
            cid = f"req-{i:02d}" + ("-fail" if i == 7 else "")
            body = {"model": "test-model", "messages": [{"role": "user", "content": text}]}
            f.write(json.dumps({"custom_id": cid, "body": body}) + "\n")
    return path


def _wait(client: Together, batch_id: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        job = client.batches.retrieve(batch_id)
        seen.append(job.status)
        if job.status in ("COMPLETED", "FAILED", "EXPIRED", "CANCELLED"):  # CANCELING: not yet
            return job, seen
        time.sleep(0.05)
    raise AssertionError(f"batch {batch_id} still {seen[-1]} after {timeout}s")


def test_sdk_full_batch_round_trip(emu: Emulator, client: Together, input_file: Path) -> None:
    uploaded = client.files.upload(input_file, purpose="batch-api", check=False)
    assert uploaded.id.startswith("file-")
    assert uploaded.bytes == input_file.stat().st_size
    assert uploaded.purpose == "batch-api" and uploaded.filename == "requests.jsonl"
    # The real three-step upload happened: form POST answered 302, PUT to the presigned URL, preprocess.
    calls = [(r.method, r.path.split("/")[1], r.status) for r in emu.requests]
    assert calls == [("POST", "v1", 302), ("PUT", "_upload", 200), ("POST", "v1", 200)]

    created = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions")
    assert created.job is not None and created.job.status == "VALIDATING"
    assert created.job.input_file_id == uploaded.id
    assert created.job.file_size_bytes == uploaded.bytes

    job, seen = _wait(client, created.job.id)
    assert job.status == "COMPLETED", job.error
    assert "IN_PROGRESS" in seen
    assert job.progress == 100.0
    assert job.completed_at is not None and job.created_at is not None
    assert (
        job.job_deadline is not None
        and (job.job_deadline - job.created_at).total_seconds() == 24 * 3600
    )
    assert job.output_file_id and job.error_file_id

    output = [
        json.loads(line) for line in client.files.content(job.output_file_id).read().splitlines()
    ]
    errors = [
        json.loads(line) for line in client.files.content(job.error_file_id).read().splitlines()
    ]
    assert {o["custom_id"] for o in output} == {f"req-{i:02d}" for i in range(N) if i not in (5, 7)}
    assert {e["custom_id"] for e in errors} == {"req-05", "req-07-fail"}
    first = output[0]
    assert first["id"].startswith("br_") and first["response"]["status_code"] == 200
    body = first["response"]["body"]
    assert body["object"] == "chat.completion" and body["model"] == "test-model"
    assert body["choices"][0]["message"]["role"] == "assistant"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    by_id = {
        o["custom_id"]: o["response"]["body"]["choices"][0]["message"]["content"] for o in output
    }
    assert by_id["req-01"] == "positive"  # "I love product 1"
    assert all(set(e["error"]) == {"message", "code"} for e in errors)

    assert created.job.id in [b.id for b in client.batches.list()]
    listed = {f.id: f for f in client.files.list().data}
    assert {uploaded.id, job.output_file_id, job.error_file_id} <= set(listed)
    out_meta = client.files.retrieve(job.output_file_id)
    assert out_meta.purpose == "batch-generated" and out_meta.bytes > 0

    deleted = client.files.delete(uploaded.id)
    assert deleted.deleted is True and deleted.id == uploaded.id
    with pytest.raises(NotFoundError):
        client.files.retrieve(uploaded.id)


def test_sdk_reupload_of_same_bytes_returns_existing_file(
    emu: Emulator, client: Together, input_file: Path
) -> None:
    first = client.files.upload(input_file, purpose="batch-api", check=False)
    emu.clear_requests()
    again = client.files.upload(input_file, purpose="batch-api", check=False)
    assert again.id == first.id
    # One 409 (no retries of it), then the SDK fetches the existing file.
    assert [(r.method, r.status) for r in emu.requests] == [("POST", 409), ("GET", 200)]


def test_sdk_cancel(client: Together, input_file: Path) -> None:
    uploaded = client.files.upload(input_file, purpose="batch-api", check=False)
    job = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions").job
    assert job is not None and job.id
    canceling = client.batches.cancel(job.id)
    assert canceling.status == "CANCELING"  # the live service's first answer
    again, seen = _wait(client, job.id)
    assert again.status == "CANCELLED" and seen[0] == "CANCELING"
    assert again.output_file_id is None  # cancelled while validating: nothing was done


def test_sdk_wrong_key_is_authentication_error(emu: Emulator) -> None:
    bad = Together(api_key="wrong", base_url=emu.host_url, max_retries=0)
    with pytest.raises(AuthenticationError) as info:
        bad.batches.list()
    assert info.value.status_code == 401
    assert (
        isinstance(info.value.body, dict) and info.value.body["error"]["code"] == "invalid_api_key"
    )


def test_sdk_not_found(client: Together) -> None:
    with pytest.raises(NotFoundError):
        client.batches.retrieve("00000000-0000-0000-0000-000000000000")
    with pytest.raises(NotFoundError):
        client.files.content("file-missing").read()


def test_sdk_honours_retry_after_on_429(emu: Emulator, client: Together) -> None:
    emu.add_fault(method="GET", path=r"^/v1/batches$", kind="status", status=429, retry_after=0.1)
    started = time.monotonic()
    assert client.batches.list() is None  # `null`: what the live service sends for no batches
    assert time.monotonic() - started < 1.0  # waited Retry-After (0.1 s), not its own 1 s backoff
    assert [r.status for r in emu.requests] == [429, 200]


def test_sdk_reads_string_form_error(emu: Emulator, client: Together) -> None:
    emu.add_fault(
        method="POST", path=r"^/v1/batches$", kind="string_error", status=400, message="bad batch"
    )
    with pytest.raises(BadRequestError) as info:
        client.batches.create(input_file_id="file-x", endpoint="/v1/chat/completions")
    assert info.value.body == {"error": "bad batch"}
