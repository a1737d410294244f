"""Plain-Python client for Together AI's Files and Batch API (httpx; no Dagster import).

``TogetherClient(...).files`` and ``.batches`` mirror together-python's method names;
``retrieve_content`` streams, resumes, verifies and publishes atomically to any fsspec URL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# Types and errors are light; the httpx-backed classes load on first use so that importing
# ``dagster_together`` (and a code location that only defines resources) stays fast.
from dagster_together.client.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BatchNotCreatedError,
    BatchWaitTimeout,
    ConflictError,
    DownloadError,
    FileValidationError,
    InputFileNotFoundError,
    InvalidRequestFileError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TogetherError,
)
from dagster_together.client.settings import ClientSettings, Retries
from dagster_together.client.types import BatchJob, BatchStatus, FileObject, FileResponse
from dagster_together.lazy import lazy_getattr

if TYPE_CHECKING:
    from dagster_together.client.batches import Batches
    from dagster_together.client.core import TogetherClient
    from dagster_together.client.download import normalize_key
    from dagster_together.client.files import Files
    from dagster_together.client.progress import LogSink
    from dagster_together.client.transport import (
        DEFAULT_BASE_URL,
        Transport,
        normalize_base_url,
    )

_LAZY = {
    "Batches": ".batches",
    "TogetherClient": ".core",
    "normalize_key": ".download",
    "Files": ".files",
    "LogSink": ".progress",
    "DEFAULT_BASE_URL": ".transport",
    "Transport": ".transport",
    "normalize_base_url": ".transport",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


__all__ = [
    "DEFAULT_BASE_URL",
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BatchJob",
    "BatchNotCreatedError",
    "BatchStatus",
    "BatchWaitTimeout",
    "Batches",
    "ClientSettings",
    "ConflictError",
    "DownloadError",
    "FileObject",
    "FileResponse",
    "FileValidationError",
    "Files",
    "InputFileNotFoundError",
    "InvalidRequestFileError",
    "LogSink",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "Retries",
    "ServerError",
    "TogetherClient",
    "TogetherError",
    "Transport",
    "normalize_base_url",
    "normalize_key",
]
