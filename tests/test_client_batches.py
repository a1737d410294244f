"""Batches over real HTTP: create/get/list/cancel, and a create that is never blindly retried."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dagster_together.client import (
    APIConnectionError,
    BatchJob,
    BatchStatus,
    RateLimitError,
    ServerError,
    TogetherClient,
)
from tests.helpers import fast_client, write_requests


def _input_file(client: TogetherClient, tmp_path: Path, n: int = 3) -> str:
    path = write_requests(tmp_path / "in.jsonl", n, prompt="hi {i}")
    return client.files.upload(path, check=False).id


class FaultyTransport(httpx.HTTPTransport):
    """Real HTTP to the emulator, with a hook that may break a request before or after sending.

    ``before(request)`` may raise (the request never leaves); ``after(request, response)`` runs
    once the server has answered and may raise (the answer is lost on the way back).
    """

    def __init__(self) -> None:
        super().__init__()
        self.before: Callable[[httpx.Request], None] | None = None
        self.after: Callable[[httpx.Request, httpx.Response], None] | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.before is not None:
            self.before(request)
        response = super().handle_request(request)
        if self.after is not None:
            response.read()
            self.after(request, response)
        return response


@pytest.fixture
def faulty() -> FaultyTransport:
    return FaultyTransport()


@pytest.fixture
def client(emulator: Any, api_key: str, faulty: FaultyTransport) -> Iterator[TogetherClient]:
    with fast_client(emulator, api_key, timeout=5, max_retries=3, http_transport=faulty) as c:
        yield c


def _calls(emulator: Any) -> list[tuple[str, str, int]]:
    return [(r.method, r.path, r.status) for r in emulator.requests]


def _only(n: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Let a hook act on the first ``n`` POST /v1/batches only."""

    def wrap(hook: Callable[..., None]) -> Callable[..., None]:
        left = [n]

        def run(request: httpx.Request, *rest: Any) -> None:
            if request.method == "POST" and request.url.path == "/v1/batches" and left[0] > 0:
                left[0] -= 1
                hook(request, *rest)

        return run

    return wrap


def test_create_get_list_cancel(client: TogetherClient, emulator: Any, tmp_path: Path) -> None:
    file_id = _input_file(client, tmp_path)
    job = client.batches.create_batch(file_id, model_id="m")
    assert isinstance(job, BatchJob)
    assert job.input_file_id == file_id
    assert job.endpoint == "/v1/chat/completions"
    assert job.status in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS)
    assert job.created_at is not None and job.job_deadline is not None
    assert client.batches.get_batch(job.id).id == job.id
    assert [b.id for b in client.batches.list_batches()] == [job.id]
    cancelled = client.batches.cancel_batch(job.id)
    assert cancelled.id == job.id
    assert cancelled.status in (BatchStatus.CANCELING, BatchStatus.COMPLETED)
    assert client.batches.wait(job.id, poll_interval=0.05).status.is_terminal


def test_whole_flow_upload_create_wait_download_delete(
    client: TogetherClient, emulator: Any, tmp_path: Path
) -> None:
    file_id = _input_file(client, tmp_path, n=4)
    job = client.batches.create_batch(file_id)
    deadline = time.monotonic() + 5
    while not job.status.is_terminal and time.monotonic() < deadline:
        time.sleep(0.05)
        job = client.batches.get_batch(job.id)
    assert job.status is BatchStatus.COMPLETED
    assert job.output_file_id and job.progress == 100.0
    result = client.files.retrieve_content(job.output_file_id, output=tmp_path / "out.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert result.size == (tmp_path / "out.jsonl").stat().st_size
    assert sorted(line["custom_id"] for line in lines) == ["r0", "r1", "r2", "r3"]
    assert all(line["response"]["status_code"] == 200 for line in lines)
    assert client.files.delete(file_id) is True
    assert file_id not in {f.id for f in client.files.list()}


def test_create_accepts_a_bare_job_and_the_envelope(api_key: str) -> None:
    job = {
        "id": "b-1",
        "status": "VALIDATING",
        "input_file_id": "file-1",
        "endpoint": "/v1/chat/completions",
    }
    for answer in (job, {"job": job, "warning": "model is slow"}):
        mock = httpx.MockTransport(lambda request, answer=answer: httpx.Response(201, json=answer))
        with TogetherClient(api_key, "http://t", http_transport=mock) as c:
            assert c.batches.create_batch("file-1").id == "b-1"


def test_create_sends_the_documented_body(api_key: str) -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(201, json={"job": {"id": "b", "status": "VALIDATING"}})

    with TogetherClient(api_key, "http://t", http_transport=httpx.MockTransport(handler)) as c:
        c.batches.create_batch("file-1")
        c.batches.create_batch("file-2", endpoint="/v1/completions", model_id="mm")
    assert bodies == [
        {"input_file_id": "file-1", "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        {
            "input_file_id": "file-2",
            "endpoint": "/v1/completions",
            "completion_window": "24h",
            "model_id": "mm",
        },
    ]


def test_lost_create_answer_does_not_create_a_second_batch(
    client: TogetherClient, emulator: Any, faulty: FaultyTransport, tmp_path: Path
) -> None:
    file_id = _input_file(client, tmp_path)
    emulator.clear_requests()

    @_only(1)
    def drop_answer(request: httpx.Request, response: httpx.Response) -> None:
        raise httpx.ReadError("connection reset after the request was sent", request=request)

    faulty.after = drop_answer
    job = client.batches.create_batch(file_id)
    batches = emulator.batches()
    assert len(batches) == 1  # created once, never twice
    assert job.id == batches[0]["id"]
    assert _calls(emulator) == [("POST", "/v1/batches", 201), ("GET", "/v1/batches", 200)]


def test_truncated_create_answer_from_the_server(
    client: TogetherClient, emulator: Any, tmp_path: Path
) -> None:
    file_id = _input_file(client, tmp_path)
    emulator.clear_requests()
    emulator.add_fault(method="POST", path=r"^/v1/batches$", kind="drop", after_bytes=10)
    job = client.batches.create_batch(file_id)
    assert [b["id"] for b in emulator.batches()] == [job.id]
    assert [m for m, _, _ in _calls(emulator)] == ["POST", "GET"]


def test_5xx_without_a_batch_is_sent_again(
    client: TogetherClient, emulator: Any, tmp_path: Path
) -> None:
    file_id = _input_file(client, tmp_path)
    emulator.clear_requests()
    emulator.add_fault(method="POST", path=r"^/v1/batches$", status=500, times=2)
    job = client.batches.create_batch(file_id)
    assert [b["id"] for b in emulator.batches()] == [job.id]
    assert _calls(emulator) == [
        ("POST", "/v1/batches", 500),
        ("GET", "/v1/batches", 200),
        ("POST", "/v1/batches", 500),
        ("GET", "/v1/batches", 200),
        ("POST", "/v1/batches", 201),
    ]


def test_create_ignores_failed_and_other_batches(
    client: TogetherClient, emulator: Any, faulty: FaultyTransport, tmp_path: Path
) -> None:
    file_id = _input_file(client, tmp_path)
    other = client.batches.create_batch(file_id, endpoint="/v1/completions")
    failed = client.batches.create_batch(file_id)
    emulator.set_batch_status(failed.id, "FAILED")

    @_only(1)
    def lose(request: httpx.Request) -> None:
        raise httpx.ReadTimeout("timed out", request=request)

    # A timeout the client cannot place: it looks, finds only batches that are not this one
    # (another endpoint, a FAILED one), and sends again.
    faulty.before = lose
    emulator.clear_requests()
    job = client.batches.create_batch(file_id)
    assert job.id not in (other.id, failed.id)
    assert len(emulator.batches()) == 3
    assert _calls(emulator) == [("GET", "/v1/batches", 200), ("POST", "/v1/batches", 201)]


def test_ambiguous_failures_give_up_after_max_retries(
    client: TogetherClient, emulator: Any, tmp_path: Path
) -> None:
    file_id = _input_file(client, tmp_path)
    emulator.clear_requests()
    emulator.add_fault(method="POST", path=r"^/v1/batches$", status=503, times=None)
    with pytest.raises(ServerError, match="503"):
        client.batches.create_batch(file_id)
    methods = [m for m, p, _ in _calls(emulator) if p == "/v1/batches"]
    assert methods.count("POST") == 4 and methods.count("GET") == 4
    assert emulator.batches() == []


def test_429_on_create_is_retried_without_looking(
    client: TogetherClient, emulator: Any, tmp_path: Path
) -> None:
    file_id = _input_file(client, tmp_path)
    emulator.clear_requests()
    emulator.add_fault(method="POST", path=r"^/v1/batches$", status=429, retry_after_ms=50, times=2)
    client.batches.create_batch(file_id)
    assert _calls(emulator) == [
        ("POST", "/v1/batches", 429),
        ("POST", "/v1/batches", 429),
        ("POST", "/v1/batches", 201),
    ]
    assert len(emulator.batches()) == 1


def test_429_on_create_gives_up(client: TogetherClient, emulator: Any, tmp_path: Path) -> None:
    file_id = _input_file(client, tmp_path)
    emulator.add_fault(method="POST", path=r"^/v1/batches$", status=429, times=None)
    with pytest.raises(RateLimitError):
        client.batches.create_batch(file_id)
    assert emulator.batches() == []


def test_connection_refused_on_create_is_retried_without_looking(
    client: TogetherClient, emulator: Any, faulty: FaultyTransport, tmp_path: Path
) -> None:
    file_id = _input_file(client, tmp_path)
    emulator.clear_requests()

    @_only(2)
    def refuse(request: httpx.Request) -> None:
        raise httpx.ConnectError("connection refused", request=request)

    faulty.before = refuse
    client.batches.create_batch(file_id)
    assert _calls(emulator) == [("POST", "/v1/batches", 201)]
    assert len(emulator.batches()) == 1


def test_server_down_on_create(emulator: Any, api_key: str) -> None:
    emulator.stop()
    with TogetherClient(api_key, emulator.base_url, max_retries=1, backoff_base=0.01) as c:
        with pytest.raises(APIConnectionError, match="POST /v1/batches"):
            c.batches.create_batch("file-1")


def test_unknown_status_does_not_crash(api_key: str) -> None:
    answer = [{"id": "b", "status": "PAUSED_FOR_MAINTENANCE", "input_file_id": "f"}]
    mock = httpx.MockTransport(lambda request: httpx.Response(200, json=answer))
    with TogetherClient(api_key, "http://t", http_transport=mock) as c:
        (job,) = c.batches.list_batches()
    assert not job.status.is_terminal and not job.status.is_known
    assert str(job.status) == "PAUSED_FOR_MAINTENANCE"
