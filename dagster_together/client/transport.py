"""HTTP transport: base URL, auth, timeouts, retries and error mapping, all in one place.

Everything above this module (files, batches, download) calls :meth:`Transport.request` and
never retries on its own, except where a caller needs a retry shape the transport cannot know
(resuming a download mid-body, looking for a batch before re-sending a create). Those callers
use :meth:`Transport.wait_before_retry` so the backoff and its log line stay the same.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import httpx

from dagster_together.client.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
)
from dagster_together.client.settings import ClientSettings
from dagster_together.client.transport_download import DownloadTransport, env_proxies
from dagster_together.version import __version__

logger = logging.getLogger("dagster_together.client")

#: Where the current SDKs (2.x, 3.x) send requests; ``api.together.xyz`` (SDK 1.x) still works.
DEFAULT_BASE_URL = "https://api.together.ai/v1"

#: ``"idempotent"``: every transient failure is retried (GET, DELETE, preprocess, cancel, ...).
#: ``"unsent_only"``: only failures that prove the server did nothing (429, connection refused);
#: an ambiguous failure raises :class:`AmbiguousRequestError` for the caller to resolve.
RetryPolicy = Literal["idempotent", "unsent_only"]

# Failures before any byte reached the server: always safe to retry, even for a create.
_UNSENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class AmbiguousRequestError(Exception):
    """Internal: a non-idempotent request failed in a way that may or may not have taken effect.

    ``error`` is the public exception to raise if the caller cannot resolve the doubt.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _Secret:
    """A string that never shows itself in ``repr``/``str`` (tracebacks, debuggers, logs)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'**********'"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        # Pickling would write the key to wherever the pickle goes (run storage, a queue...).
        raise TypeError("An API key is not picklable; build the client where it is used.")


class _BearerAuth(httpx.Auth):
    """Adds ``Authorization: Bearer`` inside httpx, so no frame of ours holds a header dict with
    the key in it; httpx's own ``Headers`` repr masks ``authorization``."""

    def __init__(self, key: str) -> None:
        self._key = _Secret(key)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._key.get_secret_value()}"
        yield request

    def scrub(self, text: str) -> str:
        """``text`` with the key replaced, for server messages that might echo it back."""
        key = self._key.get_secret_value()
        return text.replace(key, "***") if key and key in text else text

    def __repr__(self) -> str:
        return "_BearerAuth(key='**********')"


def normalize_base_url(base_url: str) -> str:
    """``https://host`` -> ``https://host/v1``; a URL whose path already ends in ``/v1`` is kept.

    SDK 1.x takes the base URL with ``/v1``, SDK 3.x without; both spellings work here.
    """
    url = base_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"Invalid Together base URL {url!r}: expected http(s)://host[/v1], "
            "e.g. https://api.together.ai/v1."
        )
    if parts.query or parts.fragment:
        raise ValueError(f"Invalid Together base URL {url!r}: it may not have a query or fragment.")
    path = parts.path.rstrip("/")
    if path.rsplit("/", 1)[-1] != "v1":
        path = f"{path}/v1"
    return f"{parts.scheme}://{parts.netloc}{path}"


def quote_id(value: str) -> str:
    """An API id made safe as one URL path segment (ids are data, never paths)."""
    if not value or not isinstance(value, str):
        raise ValueError(f"Expected a non-empty id string, got {value!r}.")
    if value in (".", ".."):
        # URL normalisation would turn these into a different path, not an id.
        raise ValueError(f"{value!r} is not a valid Together id.")
    return quote(value, safe="")


def redact_url(url: str | httpx.URL) -> str:
    """``scheme://host/path`` without query or fragment: presigned URLs carry credentials there."""
    parts = urlsplit(str(url))
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asks us to wait: ``retry-after-ms``, ``Retry-After`` seconds or an
    HTTP-date; None when absent or unparseable."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = datetime.now(timezone.utc).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


# -- log redaction for presigned URLs ----------------------------------------------------------
# httpx logs every request URL at INFO, httpcore every response header at DEBUG; both would print
# the presigned upload URL (a bearer credential in its query string) in full. The filter rewrites
# only URLs whose query looks like a signature, so other users of httpx lose nothing.
_SIGNED_QUERY = re.compile(
    r"(https?://[^\s'\"<>?]+)\?[^\s'\"<>]*"
    r"(?:sig|signature|token|credential|x-amz-|expires|key=)[^\s'\"<>]*",
    re.IGNORECASE,
)
_REDACTED_LOGGERS = (
    "httpx",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.connection",
    "httpcore.proxy",
    "dagster_together.client",
)
_redaction_lock = threading.Lock()
_redaction_installed = False


class _SignedUrlFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record is not ours to fix; let logging report it
            return True
        redacted = _SIGNED_QUERY.sub(r"\1?<redacted>", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def _install_log_redaction() -> None:
    global _redaction_installed
    with _redaction_lock:
        if _redaction_installed:
            return
        for name in _REDACTED_LOGGERS:
            logging.getLogger(name).addFilter(_SignedUrlFilter())
        _redaction_installed = True


# -- error mapping ----------------------------------------------------------------------------
def _error_details(response: httpx.Response) -> tuple[str, str | None, Any]:
    """(message, code, decoded body) from ``{"error": {...}}``, ``{"error": "msg"}``, ``{"message": ...}``
    or a plain-text body."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        text = response.text.strip() if response.content else ""
        return (text[:500] or response.reason_phrase or "no details"), None, None
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, str):
            return error, None, body
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail") or body.get("message")
            code = error.get("code") or error.get("type")
            text = str(message) if message else str(error)[:500]
            return text, (str(code) if code else None), body
    return str(body)[:500], None, body


def _api_error(
    response: httpx.Response, request: str, retries: int, scrub: Callable[[str], str]
) -> APIError:
    status = response.status_code
    message, code, body = _error_details(response)
    message = scrub(message)
    tried = f" after {retries} retries" if retries else ""
    kwargs: dict[str, Any] = {"status_code": status, "code": code, "request": request, "body": body}
    if status == 401:
        return AuthenticationError(
            f"Together rejected the API key (401) for {request}: {message}. "
            "Check TOGETHER_API_KEY (or the api_key you passed).",
            **kwargs,
        )
    if status == 403:
        return PermissionDeniedError(
            f"Together refused {request} (403 forbidden): {message}. "
            "The key is valid but may not do this; check the account or project it belongs to.",
            **kwargs,
        )
    if status == 404:
        return NotFoundError(
            f"Together has no such resource (404) for {request}: {message}. "
            "Check the id; it may have been deleted or belong to another account.",
            **kwargs,
        )
    if status == 409:
        return ConflictError(
            f"Together reported a conflict (409) for {request}{tried}: {message}.", **kwargs
        )
    if status in (400, 422):
        return BadRequestError(
            f"Together rejected {request} as invalid ({status}): {message}. "
            "Fix the request; sending it again unchanged will not help.",
            **kwargs,
        )
    if status == 429:
        return RateLimitError(
            f"Together is rate limiting {request} (429){tried}: {message}. "
            "Wait and try again later, lower the request rate, or raise max_retries.",
            **kwargs,
        )
    if status >= 500:
        return ServerError(
            f"Together failed on its side ({status}) for {request}{tried}: {message}. "
            "This is usually temporary: try again later.",
            **kwargs,
        )
    return APIError(f"Together answered {status} for {request}{tried}: {message}.", **kwargs)


@dataclass(frozen=True)
class _Retry:
    """The classifier's verdict: send again, after ``retry_after`` (None: our backoff)."""

    reason: str
    retry_after: float | None = None


@dataclass(frozen=True)
class _Fail:
    """The classifier's verdict: give up with ``error``; ``ambiguous`` when the request may
    have taken effect (the caller of a non-idempotent request must find out)."""

    error: Exception
    ambiguous: bool = False
    cause: BaseException | None = None


class Transport:
    """One ``httpx.Client`` plus the policy around it. Thread-safe (httpx.Client is).

    The API key is held in an auth object whose ``repr`` hides it and is only sent to the API
    base URL, never to presigned storage URLs. ``settings`` (timeout, retries, TLS) are fixed
    for the transport's life.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        settings: ClientSettings | None = None,
        *,
        http_transport: httpx.BaseTransport | None = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get("TOGETHER_API_KEY")
        if not key:
            raise AuthenticationError(
                "No Together API key: pass api_key=... or set the TOGETHER_API_KEY environment "
                "variable. Nothing was sent."
            )
        self._auth = _BearerAuth(key)
        del key, api_key  # only the auth object holds it from here on
        self.settings = settings if settings is not None else ClientSettings()
        self.base_url = normalize_base_url(
            base_url or os.environ.get("TOGETHER_BASE_URL") or DEFAULT_BASE_URL
        )
        self._sleep: Callable[[float], None] = time.sleep  # seam for tests
        self._base_path = urlsplit(self.base_url).path
        self._http = self._client(http_transport)
        # Downloads go over the standard library (their bodies taken in large pieces) unless the
        # caller chose the transport, or the environment names a proxy that httpx would use.
        self._downloads = self._http
        if http_transport is None and not env_proxies():
            self._downloads = self._client(
                DownloadTransport(verify=self.settings.verify_tls, timeout=self.settings.timeout)
            )
        _install_log_redaction()

    def _client(self, transport: httpx.BaseTransport | None) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(self.settings.timeout),
            verify=self.settings.verify_tls,
            transport=transport,
            follow_redirects=False,
            headers={
                "User-Agent": f"dagster-together/{__version__} httpx/{httpx.__version__}",
                "Accept": "application/json",
            },
        )

    def __repr__(self) -> str:
        return f"Transport(base_url={self.base_url!r}, api_key='**********')"

    @property
    def timeout(self) -> float:
        """Seconds for connect and for each read/write."""
        return self.settings.timeout

    @property
    def max_retries(self) -> int:
        """Retries after the first attempt (also the resumes a download may make)."""
        return self.settings.retries.max_retries

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()
        self._downloads.close()

    def scrub(self, text: str) -> str:
        """``text`` with the API key masked (for anything built from server-provided strings)."""
        return self._auth.scrub(text)

    # -- helpers -------------------------------------------------------------------------------
    def url_for(self, path: str) -> str:
        """Absolute URL of an API ``path`` like ``/files`` (as httpx will build it)."""
        return f"{self.base_url}/{path.lstrip('/')}"

    def describe(self, method: str, path: str) -> str:
        """``"GET /v1/files"`` for API paths, ``"PUT http://host/path"`` (no query) for URLs."""
        if "://" in path:
            return f"{method} {redact_url(path)}"
        return f"{method} {self._base_path}/{path.lstrip('/')}"

    # -- wait ----------------------------------------------------------------------------------
    def backoff_delay(self, retry: int) -> float:
        """Exponential backoff with jitter for the ``retry``-th retry (1-based)."""
        policy = self.settings.retries
        delay = min(policy.backoff_max, policy.backoff_base * 2.0 ** max(0, retry - 1))
        # Jitter keeps many workers that failed together from retrying in lockstep.
        return delay * (1.0 - 0.25 * random.random())

    def wait_before_retry(
        self, retry: int, request: str, reason: str, retry_after: float | None = None
    ) -> float:
        """Log the retry at WARNING and sleep; honours a server's ``Retry-After`` (capped)."""
        if retry_after is not None:
            wait = min(retry_after, self.settings.retries.retry_after_max)
        else:
            wait = self.backoff_delay(retry)
        logger.warning(
            "Together %s: %s; retrying in %.2f s (retry %d of %d)",
            request,
            reason,
            wait,
            retry,
            self.max_retries,
        )
        self._sleep(wait)
        return wait

    # -- classify ------------------------------------------------------------------------------
    def _retryable_status(self, status: int, method: str, policy: RetryPolicy) -> bool:
        if status == 429:
            return True  # refused before doing anything: safe for every request
        if policy != "idempotent":
            return False
        if status == 409:
            # 409 is a state conflict; only a read can expect it to clear on its own.
            return method in ("GET", "HEAD")
        return status == 408 or (status >= 500 and status != 501)

    def _classify_failure(
        self, exc: httpx.TransportError, policy: RetryPolicy, retries: int, described: str
    ) -> _Retry | _Fail:
        """A request that got no answer: retry it, or the error to raise."""
        unsent = isinstance(exc, _UNSENT_ERRORS)  # nothing reached the server
        if retries < self.max_retries and (unsent or policy == "idempotent"):
            return _Retry(type(exc).__name__)
        error = self._connection_error(exc, described, retries)
        return _Fail(error, ambiguous=not unsent and policy != "idempotent", cause=exc)

    def _classify_answer(
        self,
        response: httpx.Response,
        method: str,
        policy: RetryPolicy,
        retries: int,
        described: str,
    ) -> _Retry | _Fail | None:
        """An HTTP answer: None to return it, a retry, or the error to raise. Consumes and
        closes the response unless it is returned."""
        status = response.status_code
        if status < 400:
            return None
        # x-should-retry is the server's explicit word (Stainless convention) and wins.
        should = response.headers.get("x-should-retry", "").lower()
        retryable = self._retryable_status(status, method, policy)
        if should == "false":
            retryable = False
        elif should == "true" and policy == "idempotent":
            retryable = True
        if retryable and retries < self.max_retries:
            response.close()
            return _Retry(f"{status} {response.reason_phrase}", parse_retry_after(response.headers))
        try:
            response.read()  # a streamed error body; a no-op for one already read
            error = _api_error(response, described, retries, self.scrub)
        finally:
            response.close()
        return _Fail(error, ambiguous=policy != "idempotent" and (status >= 500 or status == 408))

    def _connection_error(self, exc: httpx.TransportError, request: str, retries: int) -> Exception:
        tried = f" after {retries} retries" if retries else ""
        detail = self.scrub(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        if isinstance(exc, httpx.TimeoutException):
            return APITimeoutError(
                f"Together did not answer {request} within the {self.timeout:g} s timeout{tried} "
                f"({detail}). Try again later or raise timeout=."
            )
        return APIConnectionError(
            f"Could not reach Together for {request}{tried} ({detail}). "
            f"Check the network and the base URL ({self.base_url})."
        )

    # -- send ----------------------------------------------------------------------------------
    def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any,
        content: bytes | Callable[[], Iterable[bytes]] | None,
        headers: Mapping[str, str] | None,
        authenticate: bool,
        stream: bool,
        follow_redirects: bool,
        download: bool,
    ) -> httpx.Response | httpx.TransportError:
        """One attempt: the answer, or the network error that stopped it."""
        http = self._downloads if download else self._http
        body = content() if callable(content) else content
        request = http.build_request(method, path, json=json, content=body, headers=headers)
        try:
            return http.send(
                request,
                auth=self._auth if authenticate else None,
                stream=stream,
                follow_redirects=follow_redirects,
            )
        except httpx.TransportError as exc:
            return exc

    # -- the request loop: send, classify, wait --------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | Callable[[], Iterable[bytes]] | None = None,
        headers: Mapping[str, str] | None = None,
        authenticate: bool = True,
        retry: RetryPolicy = "idempotent",
        stream: bool = False,
        follow_redirects: bool = False,
        download: bool = False,
    ) -> httpx.Response:
        """Send a request with retries; return a response with status < 400 or raise.

        ``path`` is an API path (``/files``) or an absolute URL (a presigned URL: then pass
        ``authenticate=False``). ``content`` may be a callable returning a fresh iterable for each
        attempt, so a streamed upload can be re-sent. With ``stream=True`` the caller must close
        the response. ``download=True`` (with ``stream=True``) sends it on a connection of its
        own whose body may be read with ``response.extensions[READ1]`` when present. Errors:
        :class:`~dagster_together.client.errors.APIError` subclasses for
        HTTP errors, :class:`APIConnectionError` / :class:`APITimeoutError` for the network.
        """
        method = method.upper()
        described = self.describe(method, path)
        retries = 0
        while True:
            outcome = self._send(
                method,
                path,
                json=json,
                content=content,
                headers=headers,
                authenticate=authenticate,
                stream=stream,
                follow_redirects=follow_redirects,
                download=download,
            )
            if isinstance(outcome, httpx.Response):
                verdict = self._classify_answer(outcome, method, retry, retries, described)
                if verdict is None:
                    return outcome
            else:
                verdict = self._classify_failure(outcome, retry, retries, described)
            if isinstance(verdict, _Retry):
                retries += 1
                self.wait_before_retry(retries, described, verdict.reason, verdict.retry_after)
                continue
            if verdict.ambiguous:
                raise AmbiguousRequestError(verdict.error) from verdict.cause
            raise verdict.error from verdict.cause

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """:meth:`request` and decode the JSON answer (a clear error if it is not JSON)."""
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise APIError(
                f"Together answered {self.describe(method, path)} with {response.status_code} "
                f"but the body is not JSON: {self.scrub(response.text[:200])!r}.",
                status_code=response.status_code,
                request=self.describe(method, path),
            ) from exc
