"""``TogetherClient``: the plain-Python entry point (no Dagster needed)."""

from __future__ import annotations

from dataclasses import replace
from types import TracebackType
from typing import Any

import httpx

from dagster_together.client.batches import Batches
from dagster_together.client.files import Files
from dagster_together.client.settings import ClientSettings, Retries
from dagster_together.client.transport import Transport


class TogetherClient:
    """A client for Together's Files and Batch API.

    Args:
        api_key: the API key; None reads ``TOGETHER_API_KEY``. It is never shown by ``repr``,
            in exception messages or in logs.
        base_url: None reads ``TOGETHER_BASE_URL``, else ``https://api.together.ai/v1`` (the
            current SDKs' host; ``https://api.together.xyz/v1`` works too). A URL without a
            ``/v1`` path gets ``/v1`` added (SDK 3.x style host-only URLs work).
        timeout: seconds for connect and for each read/write (not for a whole download).
        max_retries: retries after the first attempt, for transient failures only (429, 408,
            5xx, connection errors); also the number of resumes a download may make.
        verify_tls: verify the server's TLS certificate; turn off only for a test server.
        backoff_base, backoff_max: exponential backoff: ``backoff_base`` doubling per retry,
            capped at ``backoff_max`` seconds, with jitter. A server's ``Retry-After`` wins,
            capped at ``retry_after_max`` seconds (60 by default).
        settings: all of the above as one typed :class:`ClientSettings` (the keywords above,
            when given, override its fields).
        retries: the retry fields as one typed :class:`Retries` (overrides ``settings.retries``;
            the retry keywords above, when given, override its fields).
        http_transport: an ``httpx.BaseTransport`` to send requests through (tests, proxies).

    Use as a context manager, or call :meth:`close`, to release connections.

    Example::

        client = TogetherClient()
        f = client.files.upload("requests.jsonl")
        job = client.batches.create_batch(f.id)
        job = client.batches.wait(job.id)
        out = client.files.retrieve_content(job.output_file_id, output="out.jsonl")
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        verify_tls: bool | None = None,
        backoff_base: float | None = None,
        backoff_max: float | None = None,
        retry_after_max: float | None = None,
        settings: ClientSettings | None = None,
        retries: Retries | None = None,
        http_transport: httpx.BaseTransport | None = None,
    ) -> None:
        settings = settings if settings is not None else ClientSettings()
        retry_fields: dict[str, Any] = {
            "max_retries": max_retries,
            "backoff_base": backoff_base,
            "backoff_max": backoff_max,
            "retry_after_max": retry_after_max,
        }
        retries = replace(
            retries if retries is not None else settings.retries,
            **{name: value for name, value in retry_fields.items() if value is not None},
        )
        fields: dict[str, Any] = {"timeout": timeout, "verify_tls": verify_tls}
        settings = replace(
            settings,
            retries=retries,
            **{name: value for name, value in fields.items() if value is not None},
        )
        self._transport = Transport(api_key, base_url, settings, http_transport=http_transport)
        del api_key
        self.files = Files(self._transport)
        self.batches = Batches(self._transport)

    @property
    def settings(self) -> ClientSettings:
        """The settings in force (timeout, retries, TLS verification)."""
        return self._transport.settings

    @property
    def base_url(self) -> str:
        """The normalised API base URL, ending in ``/v1``."""
        return self._transport.base_url

    @property
    def transport(self) -> Transport:
        """The underlying transport (retry policy, timeouts)."""
        return self._transport

    def close(self) -> None:
        """Close the connection pool. The client cannot be used afterwards."""
        self._transport.close()

    def __enter__(self) -> TogetherClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TogetherClient(base_url={self.base_url!r}, api_key='**********')"
