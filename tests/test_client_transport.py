"""Transport behaviour: base URL, retries, backoff, Retry-After, error mapping, timeouts.

Over real HTTP against the emulator; ``httpx.MockTransport`` only where the emulator cannot
produce the answer (a 200 without JSON, the bare-string error form on a specific route...).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from dagster_together.client import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TogetherClient,
    normalize_base_url,
)
from dagster_together.client.transport import parse_retry_after
from tests.helpers import fast_client


@pytest.fixture
def client(emulator: Any, api_key: str) -> Iterator[TogetherClient]:
    """A client on the emulator with a fast backoff (retries cost milliseconds)."""
    with fast_client(emulator, api_key, timeout=5, max_retries=3) as c:
        yield c


def _calls(emulator: Any, method: str, path: str) -> list[Any]:
    return [r for r in emulator.requests if r.method == method and r.path == path]


# -- base URL ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://api.together.xyz/v1", "https://api.together.xyz/v1"),
        ("https://api.together.xyz/v1/", "https://api.together.xyz/v1"),
        ("https://api.together.xyz", "https://api.together.xyz/v1"),
        ("https://api.together.ai/", "https://api.together.ai/v1"),
        ("http://127.0.0.1:8765", "http://127.0.0.1:8765/v1"),
        ("http://proxy.local/together", "http://proxy.local/together/v1"),
        ("  http://proxy.local/together/v1  ", "http://proxy.local/together/v1"),
    ],
)
def test_normalize_base_url(given: str, expected: str) -> None:
    assert normalize_base_url(given) == expected


@pytest.mark.parametrize("bad", ["api.together.xyz", "ftp://host/v1", "http://", "http://h/v1?x=1"])
def test_normalize_base_url_rejects_garbage(bad: str) -> None:
    with pytest.raises(ValueError, match="base URL"):
        normalize_base_url(bad)


def test_base_url_from_env_and_default(monkeypatch: pytest.MonkeyPatch, api_key: str) -> None:
    monkeypatch.delenv("TOGETHER_BASE_URL", raising=False)
    assert TogetherClient(api_key).base_url == "https://api.together.ai/v1"
    monkeypatch.setenv("TOGETHER_BASE_URL", "https://api.together.ai")
    assert TogetherClient(api_key).base_url == "https://api.together.ai/v1"
    assert TogetherClient(api_key, "http://x:1").base_url == "http://x:1/v1"


def test_api_key_from_env_or_clear_error(monkeypatch: pytest.MonkeyPatch, api_key: str) -> None:
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    with pytest.raises(AuthenticationError, match="TOGETHER_API_KEY"):
        TogetherClient()
    monkeypatch.setenv("TOGETHER_API_KEY", api_key)
    TogetherClient().close()


@pytest.mark.parametrize("base", ["base_url", "host_url"])
def test_base_url_with_and_without_v1_reach_the_api(emulator: Any, api_key: str, base: str) -> None:
    with TogetherClient(api_key, getattr(emulator, base)) as c:
        assert c.batches.list_batches() == []
    assert [(r.method, r.path) for r in emulator.requests] == [("GET", "/v1/batches")]


def test_tls_verification_is_on_by_default(api_key: str) -> None:
    # The httpx transport holds the SSL context; verify=True means CERT_REQUIRED.
    import ssl

    client = TogetherClient(api_key, "https://example.invalid")
    pool = client.transport._http._transport._pool  # noqa: SLF001 - no public accessor
    assert pool._ssl_context.verify_mode == ssl.CERT_REQUIRED  # noqa: SLF001
    off = TogetherClient(api_key, "https://example.invalid", verify_tls=False)
    assert off.transport._http._transport._pool._ssl_context.verify_mode == ssl.CERT_NONE  # noqa: SLF001


# -- Retry-After parsing -------------------------------------------------------------------------
def test_parse_retry_after_forms() -> None:
    assert parse_retry_after(httpx.Headers({"retry-after": "3"})) == 3.0
    assert parse_retry_after(httpx.Headers({"retry-after": "0.5"})) == 0.5
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "250"})) == 0.25
    # retry-after-ms is the more precise one and wins.
    assert parse_retry_after(httpx.Headers({"retry-after": "9", "retry-after-ms": "100"})) == 0.1
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    parsed = parse_retry_after(httpx.Headers({"retry-after": format_datetime(when, usegmt=True)}))
    assert parsed is not None and 28 <= parsed <= 31
    past = format_datetime(datetime.now(timezone.utc) - timedelta(hours=1), usegmt=True)
    assert parse_retry_after(httpx.Headers({"retry-after": past})) == 0.0
    assert parse_retry_after(httpx.Headers({"retry-after": "soon"})) is None
    assert parse_retry_after(httpx.Headers({})) is None


def test_backoff_doubles_is_capped_and_jittered(api_key: str) -> None:
    c = TogetherClient(api_key, "http://x:1", backoff_base=0.5, backoff_max=8.0)
    t = c.transport
    for retry, nominal in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (9, 8.0)]:
        delays = [t.backoff_delay(retry) for _ in range(50)]
        assert all(0.75 * nominal <= d <= nominal for d in delays)
        assert len(set(delays)) > 1  # jitter


# -- retries against the emulator ---------------------------------------------------------------
def test_429_with_retry_after_is_honoured(
    client: TogetherClient, emulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.add_fault(method="GET", path=r"^/v1/batches$", status=429, retry_after=1, times=1)
    caplog.set_level(logging.WARNING, logger="dagster_together.client")
    started = time.monotonic()
    assert client.batches.list_batches() == []
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 3.0  # the server's 1 s, not the 10 ms backoff
    assert [r.status for r in _calls(emulator, "GET", "/v1/batches")] == [429, 200]
    warning = next(r for r in caplog.records if r.name == "dagster_together.client")
    assert warning.levelno == logging.WARNING
    text = warning.getMessage()
    assert "429" in text and "/v1/batches" in text and "1.00 s" in text


def test_retry_after_ms_is_honoured(client: TogetherClient, emulator: Any) -> None:
    emulator.add_fault(method="GET", path=r"^/v1/files$", status=429, retry_after_ms=100, times=1)
    started = time.monotonic()
    client.files.list()
    assert time.monotonic() - started >= 0.09  # the server's 100 ms, not the 10 ms backoff


def test_retry_after_is_capped(emulator: Any, api_key: str) -> None:
    emulator.add_fault(method="GET", path=r"^/v1/batches$", status=503, retry_after=3600, times=1)
    # The cap (60 s by default) applies to the server's ask.
    with TogetherClient(api_key, emulator.base_url, backoff_base=0.01, retry_after_max=0.2) as c:
        started = time.monotonic()
        c.batches.list_batches()
        assert time.monotonic() - started < 2


def test_burst_of_5xx_is_retried(client: TogetherClient, emulator: Any) -> None:
    emulator.add_fault(method="GET", path=r"^/v1/batches$", status=503, times=3)
    assert client.batches.list_batches() == []
    assert [r.status for r in _calls(emulator, "GET", "/v1/batches")] == [503, 503, 503, 200]


def test_5xx_gives_up_after_max_retries(client: TogetherClient, emulator: Any) -> None:
    emulator.add_fault(method="GET", path=r"^/v1/batches$", status=502, times=None)
    with pytest.raises(ServerError) as info:
        client.batches.list_batches()
    assert len(_calls(emulator, "GET", "/v1/batches")) == 4  # 1 + max_retries
    message = str(info.value)
    assert "502" in message and "GET /v1/batches" in message and "after 3 retries" in message
    assert info.value.status_code == 502 and info.value.request == "GET /v1/batches"


def test_429_gives_up_with_rate_limit_error(client: TogetherClient, emulator: Any) -> None:
    emulator.add_fault(method="GET", path=r"^/v1/files$", status=429, times=None)
    with pytest.raises(RateLimitError, match=r"rate limiting GET /v1/files \(429\) after 3"):
        client.files.list()


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (422, BadRequestError),
        (418, APIError),
    ],
)
def test_4xx_is_never_retried(
    client: TogetherClient, emulator: Any, status: int, error: type[Exception]
) -> None:
    emulator.add_fault(method="GET", path=r"^/v1/batches$", status=status, times=None)
    with pytest.raises(error):
        client.batches.list_batches()
    assert len(_calls(emulator, "GET", "/v1/batches")) == 1


def test_401_message_says_what_to_do(emulator: Any) -> None:
    with (
        TogetherClient("wrong-key", emulator.base_url) as c,
        pytest.raises(AuthenticationError) as info,
    ):
        c.batches.list_batches()
    message = str(info.value)
    assert message.startswith("Together rejected the API key (401) for GET /v1/batches: ")
    assert "Invalid API key" in message  # the server's own words
    assert message.endswith("Check TOGETHER_API_KEY (or the api_key you passed).")
    assert info.value.code == "invalid_api_key"


def test_404_for_unknown_ids(client: TogetherClient, emulator: Any) -> None:
    with pytest.raises(NotFoundError, match=r"\(404\) for GET /v1/batches/nope: .*Check the id"):
        client.batches.get_batch("nope")
    with pytest.raises(NotFoundError):
        client.files.retrieve("file-nope")
    assert len(emulator.requests) == 2


def test_bare_string_error_body_is_mapped(client: TogetherClient, emulator: Any) -> None:
    emulator.add_fault(
        method="POST", path=r"^/v1/batches$", kind="string_error", status=400, message="bad window"
    )
    with pytest.raises(BadRequestError) as info:
        client.batches.create_batch("file-x")
    assert "bad window" in str(info.value)
    assert info.value.message.startswith("Together rejected POST /v1/batches as invalid (400)")


def test_object_error_body_fields_are_kept(client: TogetherClient, emulator: Any) -> None:
    emulator.add_fault(
        method="GET",
        path=r"^/v1/files$",
        status=403,
        body={"error": {"message": "no", "type": "forbidden", "param": None, "code": "denied"}},
    )
    with pytest.raises(PermissionDeniedError) as info:
        client.files.list()
    assert info.value.code == "denied" and info.value.status_code == 403
    assert "(403 forbidden): no." in str(info.value)


def test_plain_text_error_body(client: TogetherClient, emulator: Any) -> None:
    emulator.add_fault(
        method="GET", path=r"^/v1/files$", status=500, body="upstream exploded", times=None
    )
    with pytest.raises(ServerError, match="upstream exploded"):
        client.files.list()


def test_connection_refused_for_a_while_then_recovers(emulator: Any, api_key: str) -> None:
    with TogetherClient(
        api_key, emulator.base_url, max_retries=10, backoff_base=0.03, backoff_max=0.12
    ) as c:
        c.batches.list_batches()  # a pooled keep-alive connection that the outage will cut
        emulator.stop()
        # Down for several retries; the 10 retries (jittered, up to 0.12 s) outlast it 2.5x or more.
        restart = threading.Timer(0.3, emulator.start)
        restart.start()
        try:
            started = time.monotonic()
            assert c.batches.list_batches() == []
            assert time.monotonic() - started >= 0.25
        finally:
            restart.join()


def test_connection_refused_gives_up(emulator: Any, api_key: str) -> None:
    emulator.stop()
    with TogetherClient(api_key, emulator.base_url, max_retries=2, backoff_base=0.01) as c:
        with pytest.raises(APIConnectionError) as info:
            c.batches.list_batches()
    assert not isinstance(info.value, APITimeoutError)
    message = str(info.value)
    assert "Could not reach Together for GET /v1/batches after 2 retries" in message
    assert emulator.base_url in message


def test_slow_server_raises_timeout(emulator: Any, api_key: str) -> None:
    emulator.add_fault(method="GET", path=r"^/v1/batches$", kind="delay", seconds=1.0, times=None)
    with TogetherClient(
        api_key, emulator.base_url, timeout=0.25, max_retries=1, backoff_base=0.01
    ) as c:
        started = time.monotonic()
        with pytest.raises(APITimeoutError, match="within the 0.25 s timeout after 1 retries"):
            c.batches.list_batches()
        assert time.monotonic() - started < 1.5


def test_non_json_success_body_is_a_clear_error(api_key: str) -> None:
    mock = httpx.MockTransport(lambda request: httpx.Response(200, text="<html>proxy</html>"))
    with TogetherClient(api_key, "http://t", http_transport=mock) as c:
        with pytest.raises(APIError, match="not JSON"):
            c.batches.list_batches()


def test_x_should_retry_false_stops_retries(api_key: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503, headers={"x-should-retry": "false"}, json={"error": "down"})

    with TogetherClient(api_key, "http://t", http_transport=httpx.MockTransport(handler)) as c:
        with pytest.raises(ServerError, match="down"):
            c.files.list()
    assert len(seen) == 1


def test_409_retried_only_for_reads(api_key: str) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        if len(seen) == 1:
            return httpx.Response(409, json={"error": {"message": "busy"}})
        return httpx.Response(200, json=[])

    with TogetherClient(
        api_key, "http://t", http_transport=httpx.MockTransport(handler), backoff_base=0.01
    ) as c:
        assert c.batches.list_batches() == []
    assert seen == ["GET", "GET"]
