"""Errors a person can act on: inside a run, what the project raises becomes one ``dg.Failure``
whose first line is our message and whose cause is kept below it.

The plain-Python layer (client, requests, results) raises its own exceptions; only the Dagster
layer converts them, so that a notebook still catches ``AuthenticationError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from dagster_together.client.errors import (
    APIConnectionError,
    APITimeoutError,
    RateLimitError,
    ServerError,
    TogetherError,
)

__all__ = ["failures_for_humans"]

# Libraries whose own exceptions (not always OSError: botocore's NoCredentialsError) mean the
# storage could not be reached.
_STORAGE_LIBRARIES = frozenset({"fsspec", "s3fs", "gcsfs", "adlfs", "botocore", "aiobotocore"})

# Worth the step's retry policy: the same call may well pass a little later.
_TRANSIENT = (APIConnectionError, APITimeoutError, RateLimitError, ServerError)


@contextmanager
def failures_for_humans(what: str, *, storage_url: str | None = None) -> Iterator[None]:
    """Turn the project's errors (and storage errors) raised inside into one ``dg.Failure``.

    ``what`` says what the step was doing ("Submitting sentiment"); ``storage_url`` is named
    when a storage error happens, with the setting to fix.
    """
    try:
        yield
    except dg.Failure:
        raise
    except TogetherError as exc:
        # The client's messages already say what to fix (the key, the file, the limit).
        raise dg.Failure(
            description=f"{what}: {exc}", allow_retries=isinstance(exc, _TRANSIENT)
        ) from exc
    except Exception as exc:
        if not _is_storage_error(exc):
            raise
        where = f" storage_url={storage_url!r}" if storage_url else " the storage location"
        raise dg.Failure(
            description=(
                f"{what}: cannot read or write{where} ({type(exc).__name__}: {exc}). Check that "
                "the location exists and that this process has credentials for it "
                "(storage_options)."
            ),
        ) from exc


def _is_storage_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in _STORAGE_LIBRARIES
