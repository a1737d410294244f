"""Plain-Python client for Together AI's Files and Batch API (httpx; no Dagster import).

``TogetherClient(...).files`` and ``.batches`` mirror together-python's method names;
``retrieve_content`` streams, resumes, verifies and publishes atomically to any fsspec URL.
"""

from dagster_together.client.batches import Batches
from dagster_together.client.core import TogetherClient
from dagster_together.client.download import normalize_key
from dagster_together.client.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    DownloadError,
    InputFileNotFoundError,
    InvalidRequestFileError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TogetherError,
)
from dagster_together.client.files import Files
from dagster_together.client.progress import LogSink
from dagster_together.client.transport import DEFAULT_BASE_URL, Transport, normalize_base_url
from dagster_together.client.types import BatchJob, BatchStatus, FileObject, FileResponse

__all__ = [
    "DEFAULT_BASE_URL",
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BatchJob",
    "BatchStatus",
    "Batches",
    "ConflictError",
    "DownloadError",
    "FileObject",
    "FileResponse",
    "Files",
    "InputFileNotFoundError",
    "InvalidRequestFileError",
    "LogSink",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "TogetherClient",
    "TogetherError",
    "Transport",
    "normalize_base_url",
    "normalize_key",
]
