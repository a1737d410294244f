"""The API key never leaks: not in exceptions, reprs, logs (httpx/httpcore at DEBUG included),
nor in the locals of the client's own frames in a traceback."""

from __future__ import annotations

import json
import logging
import pickle
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from dagster_together.client import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    DownloadError,
    NotFoundError,
    RateLimitError,
    ServerError,
    TogetherClient,
    TogetherError,
)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _our_frame_locals(exc: BaseException) -> str:
    """repr of every local in the client's own frames, as a traceback with locals shows them."""
    text = []
    for link in _chain(exc):
        for frame, _ in traceback.walk_tb(link.__traceback__):
            if "dagster_together/client/" in frame.f_code.co_filename:
                text.extend(f"{name}={value!r}" for name, value in frame.f_locals.items())
    return "\n".join(text)


def _assert_clean(key: str, exc: BaseException) -> None:
    for link in _chain(exc):
        assert key not in str(link), type(link)
        assert key not in repr(link), type(link)
        assert key not in repr(getattr(link, "body", None))
    assert key not in _our_frame_locals(exc)
    assert key not in "".join(traceback.format_exception(exc))


def test_the_key_never_leaks(
    emulator: Any, api_key: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # root: httpx, httpcore and ours, all at DEBUG
    client = TogetherClient(
        api_key, emulator.base_url, timeout=0.5, max_retries=1, backoff_base=0.01
    )
    for text in (repr(client), str(client), repr(client.transport), repr(client.files)):
        assert api_key not in text and "**********" in text
    assert api_key not in repr(vars(client)) and api_key not in repr(vars(client.transport))

    # A working session first: upload (with the presigned PUT), batch, download.
    path = tmp_path / "in.jsonl"
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    path.write_text(json.dumps({"custom_id": "a", "body": body}) + "\n")
    uploaded = client.files.upload(path, check=False)
    client.batches.create_batch(uploaded.id)
    client.files.retrieve_content(uploaded.id, output=tmp_path / "copy.jsonl")

    failures: list[tuple[Callable[[], Any], type[Exception]]] = []

    def fault(kind: str = "status", method: str = "GET", **params: Any) -> None:
        emulator.add_fault(method=method, path=r"^/v1/batches$", kind=kind, times=None, **params)

    scenarios: list[tuple[Callable[[], None], Callable[[], Any], type[Exception]]] = [
        (lambda: fault(status=401), client.batches.list_batches, AuthenticationError),
        (lambda: None, lambda: client.files.retrieve("file-nope"), NotFoundError),
        (lambda: fault(status=429, retry_after_ms=1), client.batches.list_batches, RateLimitError),
        (lambda: fault(status=500), client.batches.list_batches, ServerError),
        (lambda: fault(kind="string_error", status=400), client.batches.list_batches, APIError),
        (lambda: fault(kind="delay", seconds=1.0), client.batches.list_batches, APITimeoutError),
        (
            lambda: fault(method="POST", status=503),
            lambda: client.batches.create_batch("file-without-batches"),
            ServerError,
        ),
        (
            lambda: emulator.add_fault(path=r"/content$", kind="drop", after_bytes=1, times=None),
            lambda: client.files.retrieve_content(uploaded.id, output=tmp_path / "x.jsonl"),
            DownloadError,
        ),
    ]
    for arm, call, expected in scenarios:
        emulator.clear_faults()
        arm()
        with pytest.raises(expected) as info:
            call()
        _assert_clean(api_key, info.value)
        failures.append((call, expected))
    emulator.clear_faults()

    emulator.stop()  # connection refused
    with pytest.raises(APIConnectionError) as refused:
        client.batches.list_batches()
    _assert_clean(api_key, refused.value)

    assert len(failures) == len(scenarios)
    assert caplog.records, "expected log records at DEBUG"
    assert api_key not in caplog.text
    for record in caplog.records:
        assert api_key not in record.getMessage()
        assert api_key not in repr(record.args)
    client.close()


def test_a_key_echoed_by_the_server_is_masked(api_key: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"message": f"Key {api_key} is revoked"}})

    with TogetherClient(api_key, "http://t", http_transport=httpx.MockTransport(handler)) as c:
        with pytest.raises(AuthenticationError) as info:
            c.files.list()
    assert api_key not in str(info.value)
    assert "Key *** is revoked" in str(info.value)


def test_the_key_is_only_sent_to_the_api(api_key: str) -> None:
    seen: dict[str, str | None] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen[f"{request.method} {request.url.host}"] = request.headers.get("authorization")
        if request.url.path == "/v1/files":
            return httpx.Response(
                302,
                headers={"Location": "https://bucket.s3/x?sig=1", "X-Together-File-Id": "f"},
            )
        if request.method == "PUT":
            return httpx.Response(200)
        return httpx.Response(200, json={"id": "f"})

    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".jsonl") as handle:
        handle.write(b"{}\n")
        handle.flush()
        with TogetherClient(
            api_key, "https://api", http_transport=httpx.MockTransport(handler)
        ) as c:
            c.files.upload(handle.name, check=False)
    assert seen == {
        "POST api": f"Bearer {api_key}",
        "PUT bucket.s3": None,
    }


def test_the_key_cannot_be_pickled(api_key: str) -> None:
    client = TogetherClient(api_key, "http://t")
    with pytest.raises(TypeError):
        pickle.dumps(client.transport._auth)  # noqa: SLF001
    assert isinstance(AuthenticationError("x"), TogetherError)
