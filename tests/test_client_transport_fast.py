"""The transport's decisions (retry or not, which error, how long to wait) in milliseconds.

``httpx.MockTransport`` plays a scripted server, and the transport's sleep seam records the
waits instead of sleeping. The same behaviours are proved over real HTTP in
test_client_transport.py; this layer pins the whole decision table cheaply.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from dagster_together.client import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    Retries,
    ServerError,
    TogetherClient,
)
from dagster_together.client.transport import AmbiguousRequestError, RetryPolicy

OK = 200
# A scripted answer: a status, (status, headers), or an httpx exception class raised instead.
Step = Any


def _scripted(steps: list[Step]) -> tuple[TogetherClient, list[str], list[float]]:
    attempts: list[str] = []
    waits: list[float] = []
    script = iter(steps)

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(request.method)
        step = next(script)
        if isinstance(step, type) and issubclass(step, Exception):
            raise step("scripted", request=request)
        status, headers = step if isinstance(step, tuple) else (step, {})
        return httpx.Response(status, headers=headers, json={"error": {"message": f"s{status}"}})

    client = TogetherClient(
        "k",
        "http://t",
        retries=Retries(max_retries=3, backoff_base=0.5, backoff_max=8.0, retry_after_max=5.0),
        http_transport=httpx.MockTransport(handler),
    )
    client.transport._sleep = waits.append  # the transport's seam for tests
    return client, attempts, waits


CASES: list[tuple[str, str, RetryPolicy, list[Step], int, type[Exception] | None]] = [
    # name, method, policy, script, attempts, error (None: success)
    ("5xx burst then ok", "GET", "idempotent", [503, 502, OK], 3, None),
    ("5xx past max_retries", "GET", "idempotent", [500] * 4, 4, ServerError),
    ("501 is not retried", "GET", "idempotent", [501], 1, ServerError),
    ("408 is retried", "GET", "idempotent", [408, OK], 2, None),
    ("400 never retried", "GET", "idempotent", [400], 1, BadRequestError),
    ("422 never retried", "POST", "idempotent", [422], 1, BadRequestError),
    ("401 never retried", "GET", "idempotent", [401], 1, AuthenticationError),
    ("403 never retried", "GET", "idempotent", [403], 1, PermissionDeniedError),
    ("404 never retried", "DELETE", "idempotent", [404], 1, NotFoundError),
    ("409 retried for a read", "GET", "idempotent", [409, OK], 2, None),
    ("409 not retried for a write", "DELETE", "idempotent", [409], 1, ConflictError),
    ("429 past max_retries", "GET", "idempotent", [429] * 4, 4, RateLimitError),
    (
        "x-should-retry false wins",
        "GET",
        "idempotent",
        [(503, {"x-should-retry": "false"})],
        1,
        ServerError,
    ),
    (
        "x-should-retry true wins",
        "POST",
        "idempotent",
        [(400, {"x-should-retry": "true"}), OK],
        2,
        None,
    ),
    ("connect error then ok", "GET", "idempotent", [httpx.ConnectError, OK], 2, None),
    ("read timeout then ok", "GET", "idempotent", [httpx.ReadTimeout, OK], 2, None),
    ("dropped mid-answer then ok", "GET", "idempotent", [httpx.RemoteProtocolError, OK], 2, None),
    (
        "refused past max_retries",
        "GET",
        "idempotent",
        [httpx.ConnectError] * 4,
        4,
        APIConnectionError,
    ),
    ("timeouts past max_retries", "GET", "idempotent", [httpx.ReadTimeout] * 4, 4, APITimeoutError),
    # A create: only failures that prove nothing happened are retried.
    ("create: 429 retried", "POST", "unsent_only", [429, 201], 2, None),
    ("create: refused retried", "POST", "unsent_only", [httpx.ConnectError, 201], 2, None),
    ("create: pool timeout retried", "POST", "unsent_only", [httpx.PoolTimeout, 201], 2, None),
    ("create: 5xx is ambiguous", "POST", "unsent_only", [503], 1, AmbiguousRequestError),
    ("create: 408 is ambiguous", "POST", "unsent_only", [408], 1, AmbiguousRequestError),
    (
        "create: read timeout is ambiguous",
        "POST",
        "unsent_only",
        [httpx.ReadTimeout],
        1,
        AmbiguousRequestError,
    ),
    (
        "create: dropped answer is ambiguous",
        "POST",
        "unsent_only",
        [httpx.RemoteProtocolError],
        1,
        AmbiguousRequestError,
    ),
    (
        "create: x-should-retry true ignored",
        "POST",
        "unsent_only",
        [(500, {"x-should-retry": "true"})],
        1,
        AmbiguousRequestError,
    ),
    ("create: 400 is plain", "POST", "unsent_only", [400], 1, BadRequestError),
    ("create: 409 is plain", "POST", "unsent_only", [409], 1, ConflictError),
]


@pytest.mark.parametrize(
    ("method", "policy", "script", "attempts", "error"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decision_table(
    method: str,
    policy: RetryPolicy,
    script: list[Step],
    attempts: int,
    error: type[Exception] | None,
) -> None:
    client, seen, waits = _scripted(script)
    with client:
        if error is None:
            assert client.transport.request(method, "/x", retry=policy).status_code < 400
        else:
            with pytest.raises(error):
                client.transport.request(method, "/x", retry=policy)
    assert len(seen) == attempts
    assert len(waits) == attempts - 1  # one wait before each retry, none after the last try


def test_ambiguous_error_carries_the_public_error() -> None:
    client, _, _ = _scripted([503])
    with client, pytest.raises(AmbiguousRequestError) as info:
        client.transport.request("POST", "/batches", retry="unsent_only")
    assert isinstance(info.value.error, ServerError) and info.value.error.status_code == 503
    assert "POST /v1/batches" in str(info.value.error)


def test_backoff_waits_double_from_the_base_with_jitter_and_a_cap() -> None:
    client, _, waits = _scripted([500] * 4)
    with client, pytest.raises(ServerError, match="after 3 retries"):
        client.transport.request("GET", "/x")
    for wait, full in zip(waits, [0.5, 1.0, 2.0], strict=True):
        assert 0.75 * full <= wait <= full
    many = TogetherClient("k", "http://t", retries=Retries(max_retries=8, backoff_max=3.0))
    assert max(many.transport.backoff_delay(n) for n in range(1, 9)) <= 3.0
    many.close()


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after": "3600"}, 5.0),  # capped at retry_after_max
    ],
)
def test_retry_after_decides_the_wait(headers: dict[str, str], expected: float) -> None:
    client, _, waits = _scripted([(429, headers), OK])
    with client:
        client.transport.request("GET", "/x")
    assert waits == [expected]


@pytest.mark.parametrize(
    "body",
    [{"error": "batch says no"}, {"error": {"message": "batch says no", "type": "x"}}],
    ids=["string form", "object form"],
)
def test_both_error_body_forms_give_the_same_error(body: dict[str, Any]) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(404, json=body))
    with TogetherClient("k", "http://t", http_transport=transport) as client:
        with pytest.raises(NotFoundError) as info:
            client.batches.get_batch("b1")
    assert "batch says no" in str(info.value) and info.value.body == body
