"""``TogetherResource``: the Dagster resource that hands out a :class:`TogetherClient`.

The client (and with it httpx) is imported only when a client is first asked for, so that
loading a code location that merely *defines* the resource stays as fast as ``import dagster``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field, PrivateAttr

if TYPE_CHECKING:
    from dagster_together.client import Batches, Files, TogetherClient

__all__ = ["TogetherResource"]


def _resolve(value: str | None) -> str | None:
    """The string behind a field that may still hold an unresolved ``dg.EnvVar``.

    Inside a run Dagster resolves ``EnvVar`` fields; a resource built in a script or a notebook
    keeps the ``EnvVar`` object, whose ``str()`` raises and which as a plain ``str`` would be the
    variable's *name*. Sending the name as the key would fail with a confusing 401.
    """
    if isinstance(value, dg.EnvVar):
        return value.get_value()
    return value


class TogetherResource(dg.ConfigurableResource):
    """Access to Together AI's Files and Batch API, in and outside Dagster runs.

    ``get_client()`` returns a cached :class:`~dagster_together.client.TogetherClient`;
    ``files`` and ``batches`` are shortcuts to its two halves, so the same object works in an
    asset, a sensor, a script or a notebook.

    The API key is never shown by ``repr``/``str`` of the resource or the client, never logged
    and never written to metadata. Prefer ``dg.EnvVar("TOGETHER_API_KEY")`` (or leave it unset):
    a literal string would be visible in the Dagster UI's resource config.

    Example:
        .. code-block:: python

            import dagster as dg
            from dagster_together import TogetherResource

            together = TogetherResource(api_key=dg.EnvVar("TOGETHER_API_KEY"))

            @dg.asset
            def batch_overview(together: TogetherResource) -> dict:
                jobs = together.batches.list_batches()
                return {str(job.status): job.id for job in jobs}

            # outside Dagster: the same resource, directly
            together.files.upload("requests.jsonl")
    """

    api_key: str | None = Field(
        default=None,
        repr=False,
        description=(
            "Together API key. Unset: the TOGETHER_API_KEY environment variable. "
            'Use dg.EnvVar("TOGETHER_API_KEY") rather than a literal.'
        ),
    )
    base_url: str | None = Field(
        default=None,
        description=(
            "API base URL, with or without the /v1 path. Unset: the TOGETHER_BASE_URL "
            "environment variable, else https://api.together.xyz/v1."
        ),
    )
    timeout: float = Field(
        default=60.0,
        description="Seconds for connecting and for each read or write of a request.",
    )
    max_retries: int = Field(
        default=5,
        description=(
            "Retries of transient failures (429, 408, 5xx, connection errors) with capped "
            "exponential backoff. Creating a batch is never blindly retried."
        ),
    )
    verify_tls: bool = Field(
        default=True,
        description=(
            "Verify the server's TLS certificate. Switch off only for a local proxy or test "
            "server you trust: without verification anyone on the path can read the API key."
        ),
    )

    _client: Any = PrivateAttr(default=None)

    def make_client(
        self,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        retry_after_max: float = 60.0,
    ) -> TogetherClient:
        """A new, uncached client; ``timeout``/``max_retries`` override the resource's values,
        ``retry_after_max`` caps how long a server's ``Retry-After`` is honoured.

        For callers with their own time budget (the batch sensor must finish well inside the
        sensor timeout). Close it when done (it is a context manager).
        """
        from dagster_together.client import TogetherClient

        return TogetherClient(
            api_key=_resolve(self.api_key),
            base_url=_resolve(self.base_url),
            timeout=self.timeout if timeout is None else timeout,
            max_retries=self.max_retries if max_retries is None else max_retries,
            verify_tls=self.verify_tls,
            retry_after_max=retry_after_max,
        )

    def get_client(self) -> TogetherClient:
        """The resource's client, created on first use and reused (one connection pool)."""
        if self._client is None:
            self._client = self.make_client()
        return self._client

    @property
    def files(self) -> Files:
        """``/files``: upload, list, retrieve, delete, retrieve_content."""
        return self.get_client().files

    @property
    def batches(self) -> Batches:
        """``/batches``: create_batch, get_batch, list_batches, cancel_batch."""
        return self.get_client().batches

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        # Release the connection pool at the end of a run / sensor tick.
        if self._client is not None:
            self._client.close()
            self._client = None
